use super::*;

fn info_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

fn meta_data(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q);
    }
    d
}

#[test]
fn meta_context_request_lengths_must_add_up_exactly() {
    let ok = parse_meta_request(&meta_data(b"v@s", &[b"base:allocation", b"x:"])).unwrap();
    assert_eq!(ok.name, "v@s");
    assert_eq!(ok.queries, ["base:allocation", "x:"]);
    let mut trailing = meta_data(b"v", &[]);
    trailing.push(0);
    assert!(parse_meta_request(&trailing).is_err());
    assert!(parse_meta_request(&[0, 0]).is_err());
    let mut many = meta_data(b"v", &[]);
    many[8] = 0xff; // a query count the data cannot hold
    assert!(parse_meta_request(&many).is_err());
    let long = meta_data(b"v", &[&[b'a'; 5000]]);
    assert_eq!(
        parse_meta_request(&long).err().map(|e| e.0),
        Some(REP_ERR_TOO_BIG)
    );
    assert!(parse_meta_request(&meta_data(b"v", &[&[0xff]])).is_err());
}

#[test]
fn only_listing_matches_namespaces_and_empty_queries() {
    let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(base_allocation_matches(&q(&[]), false));
    assert!(!base_allocation_matches(&q(&[]), true));
    assert!(base_allocation_matches(&q(&["base:"]), false));
    assert!(!base_allocation_matches(&q(&["base:"]), true));
    assert!(base_allocation_matches(
        &q(&["qemu:x", "base:allocation"]),
        true
    ));
    assert!(!base_allocation_matches(&q(&["base:allocationx"]), true));
}

#[test]
fn info_request_lengths_must_add_up_exactly() {
    let ok = parse_info_request(&info_data(b"vol", &[INFO_BLOCK_SIZE])).unwrap();
    assert_eq!(ok.name, "vol");
    assert_eq!(ok.infos, vec![INFO_BLOCK_SIZE]);

    let mut trailing = info_data(b"vol", &[]);
    trailing.push(0);
    assert!(parse_info_request(&trailing).is_err());
    assert!(parse_info_request(&[0, 0, 0]).is_err());
    let mut overrun = info_data(b"vol", &[]);
    overrun[3] = 200;
    assert!(parse_info_request(&overrun).is_err());
    let mut huge = info_data(b"", &[]);
    huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        parse_info_request(&huge).err().map(|e| e.0),
        Some(REP_ERR_TOO_BIG)
    );
    assert!(parse_info_request(&info_data(&[0xff, 0xfe], &[])).is_err());
}

#[test]
fn df_is_offered_only_with_structured_replies() {
    assert_eq!(transmission_flags(false, false) & FLAG_SEND_DF, 0);
    assert_ne!(transmission_flags(true, false) & FLAG_SEND_DF, 0);
    assert_ne!(transmission_flags(false, false) & FLAG_HAS_FLAGS, 0);
    assert_eq!(transmission_flags(false, false) & FLAG_READ_ONLY, 0);
    assert_ne!(transmission_flags(false, true) & FLAG_READ_ONLY, 0);
}
