//! Control-plane JSON: every record and message decodes to itself; every strict prefix of
//! a body is refused; no damaged body makes the decoder panic, and what one decodes to
//! decodes to itself again.

mod backups;
mod messages;
mod nodes;
mod records;

use std::fmt::Debug;

use bytes::Bytes;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_proto::control::{
    self, ControlError, ManagerReply, ManagerRequest, Secret, StorageReply, StorageRequest,
};

use self::backups::*;
use self::messages::*;
use self::nodes::*;
use self::records::*;
use crate::mutate::untrusted;
use crate::{assert_yields_every_variant, fuzz, round_trips};

/// `value` encodes to a body that decodes to it.
fn decodes_to_itself<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let body = control::encode(value);
    let got = control::decode::<T>(&body);
    prop_assert_eq!(got.as_ref(), Ok(value));
    Ok(())
}

/// A strict prefix of `value`'s body is refused.
fn prefixes_are_refused<T>(value: &T, cut: prop::sample::Index) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + Debug,
{
    let body = control::encode(value);
    let cut = cut.index(body.len());
    let got = control::decode::<T>(&body[..cut]);
    prop_assert!(
        got.is_err(),
        "{} of {} bytes decoded: {:?}",
        cut,
        body.len(),
        got
    );
    Ok(())
}

/// `body` never makes the decoder panic; a value it decodes to decodes to itself again.
fn damaged_body_is_harmless<T>(body: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(value) = control::decode::<T>(body) {
        decodes_to_itself(&value)?;
    }
    Ok(())
}

type ManagerAnswer = Result<ManagerReply, ControlError>;
type StorageAnswer = Result<StorageReply, ControlError>;

fn manager_answer() -> impl Strategy<Value = ManagerAnswer> + Clone {
    prop_oneof![
        3 => manager_reply().prop_map(Ok),
        1 => control_error().prop_map(Err),
    ]
}

fn storage_answer() -> impl Strategy<Value = StorageAnswer> + Clone {
    prop_oneof![
        3 => storage_reply().prop_map(Ok),
        1 => control_error().prop_map(Err),
    ]
}

fn body_of<T: Serialize>(
    s: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = Bytes> + Clone {
    s.prop_map(|v| control::encode(&v))
}

#[test]
fn the_strategies_yield_every_variant_of_every_message() {
    assert_yields_every_variant(
        manager_request(),
        0..MANAGER_REQUESTS,
        manager_request_index,
    );
    assert_yields_every_variant(manager_reply(), 0..MANAGER_REPLIES, manager_reply_index);
    assert_yields_every_variant(
        storage_request(),
        0..STORAGE_REQUESTS,
        storage_request_index,
    );
    assert_yields_every_variant(storage_reply(), 0..STORAGE_REPLIES, storage_reply_index);
    assert_yields_every_variant(group_op(), 0..7, group_op_index);
    assert_yields_every_variant(control_error(), 0..8, control_error_index);
}

#[test]
fn the_strategies_yield_every_variant_of_every_record() {
    assert_yields_every_variant(role(), 0..3, role_index);
    assert_yields_every_variant(scrub_action(), 0..2, scrub_action_index);
    assert_yields_every_variant(block_check(), 0..3, block_check_index);
    assert_yields_every_variant(store_kind(), 0..2, store_kind_index);
    assert_yields_every_variant(backup_state(), 0..3, backup_state_index);
    assert_yields_every_variant(snapshot_state(), 0..2, snapshot_state_index);
}

/// One property per type: `name: strategy;` asserts that every value decodes to itself.
macro_rules! decode_to_themselves {
    ($($name:ident: $strategy:expr;)*) => {
        proptest! {
            #![proptest_config(round_trips())]
            $(
                #[test]
                fn $name(value in $strategy) {
                    decodes_to_itself(&value)?;
                }
            )*
        }
    };
}

decode_to_themselves! {
    manager_requests_decode_to_themselves: manager_request();
    manager_answers_decode_to_themselves: manager_answer();
    storage_requests_decode_to_themselves: storage_request();
    storage_answers_decode_to_themselves: storage_answer();
    control_errors_decode_to_themselves: control_error();
    peer_infos_decode_to_themselves: peer_info();
    group_specs_decode_to_themselves: group_spec();
    chunk_routes_decode_to_themselves: chunk_route();
    route_pages_decode_to_themselves: route_page();
    node_registrations_decode_to_themselves: node_registration();
    roles_decode_to_themselves: role();
    group_states_decode_to_themselves: group_state();
    recovery_stats_decode_to_themselves: recovery_stats();
    descriptors_decode_to_themselves: descriptors();
    node_heartbeats_decode_to_themselves: node_heartbeat();
    scrub_cursors_decode_to_themselves: scrub_cursor();
    scrub_stats_decode_to_themselves: scrub_stats();
    scrub_actions_decode_to_themselves: scrub_action();
    region_scan_requests_decode_to_themselves: region_scan_request();
    block_checks_decode_to_themselves: block_check();
    scanned_blocks_decode_to_themselves: scanned_block();
    region_scans_decode_to_themselves: region_scan();
    node_scrubs_decode_to_themselves: node_scrub();
    snapshot_states_decode_to_themselves: snapshot_state();
    snapshot_infos_decode_to_themselves: snapshot_info();
    snapshot_usages_decode_to_themselves: snapshot_usage();
    volume_usages_decode_to_themselves: volume_usage();
    reclaim_infos_decode_to_themselves: reclaim_info();
    parent_infos_decode_to_themselves: parent_info();
    group_ops_decode_to_themselves: group_op();
    attachment_infos_decode_to_themselves: attachment_info();
    volume_infos_decode_to_themselves: volume_info();
    node_statuses_decode_to_themselves: node_status();
    replica_statuses_decode_to_themselves: replica_status();
    group_statuses_decode_to_themselves: group_status();
    cluster_statuses_decode_to_themselves: cluster_status();
    layer_bytes_decode_to_themselves: layer_bytes();
    peer_progresses_decode_to_themselves: peer_progress();
    membership_states_decode_to_themselves: membership_state();
    hashes_decode_to_themselves: hash();
    secrets_decode_to_themselves: text().prop_map(Secret);
    store_kinds_decode_to_themselves: store_kind();
    store_specs_decode_to_themselves: store_spec();
    backup_chunk_requests_decode_to_themselves: backup_chunk_request();
    region_refs_decode_to_themselves: region_ref();
    chunk_uploads_decode_to_themselves: chunk_upload();
    hydrate_chunk_requests_decode_to_themselves: hydrate_chunk_request();
    restore_sources_decode_to_themselves: restore_source();
    backup_states_decode_to_themselves: backup_state();
    backup_infos_decode_to_themselves: backup_info();
    store_infos_decode_to_themselves: store_info();
    restore_infos_decode_to_themselves: restore_info();
}

proptest! {
    #![proptest_config(round_trips())]

    /// A hash is its 64 lowercase hex digits, and reads back from them.
    #[test]
    fn a_hash_reads_back_from_its_hex(h in hash()) {
        let hex = h.to_hex();
        prop_assert_eq!(hex.len(), 64);
        prop_assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(hex.parse::<control::Hash>(), Ok(h));
    }

    /// A body cut short is refused, whichever conversation it belongs to.
    #[test]
    fn bodies_cut_short_are_refused(
        req in manager_request(),
        answer in manager_answer(),
        sreq in storage_request(),
        sanswer in storage_answer(),
        cut in any::<prop::sample::Index>(),
    ) {
        prefixes_are_refused(&req, cut)?;
        prefixes_are_refused(&answer, cut)?;
        prefixes_are_refused(&sreq, cut)?;
        prefixes_are_refused(&sanswer, cut)?;
    }
}

proptest! {
    #![proptest_config(fuzz())]

    #[test]
    fn damaged_manager_requests_never_panic(body in untrusted(body_of(manager_request()))) {
        damaged_body_is_harmless::<ManagerRequest>(&body)?;
    }

    #[test]
    fn damaged_manager_answers_never_panic(body in untrusted(body_of(manager_answer()))) {
        damaged_body_is_harmless::<ManagerAnswer>(&body)?;
    }

    #[test]
    fn damaged_storage_requests_never_panic(body in untrusted(body_of(storage_request()))) {
        damaged_body_is_harmless::<StorageRequest>(&body)?;
    }

    #[test]
    fn damaged_storage_answers_never_panic(body in untrusted(body_of(storage_answer()))) {
        damaged_body_is_harmless::<StorageAnswer>(&body)?;
    }
}
