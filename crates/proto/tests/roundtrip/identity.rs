//! The node identity file: any identity reads back as written, in the JSON serde writes;
//! and no file content, whatever it holds, makes reading it panic.

use bytes::Bytes;
use proptest::prelude::*;
use tessera_proto::identity::NodeIdentity;

use crate::mutate::untrusted;
use crate::{fuzz, round_trips, u64s};

fn identity() -> impl Strategy<Value = NodeIdentity> + Clone {
    u64s().prop_map(|node_id| NodeIdentity { node_id })
}

proptest! {
    #![proptest_config(round_trips())]

    #[test]
    fn an_identity_reads_back_as_written(id in identity()) {
        let file = id.encode();
        prop_assert_eq!(NodeIdentity::decode(&file), Ok(id));
        prop_assert_eq!(file, serde_json::to_vec(&id).unwrap());
    }
}

proptest! {
    #![proptest_config(fuzz())]

    #[test]
    fn identity_files_never_panic(
        file in untrusted(identity().prop_map(|id| Bytes::from(id.encode()))),
    ) {
        if let Ok(id) = NodeIdentity::decode(&file) {
            prop_assert_eq!(NodeIdentity::decode(&id.encode()), Ok(id));
        }
    }
}
