//! A process out of descriptors: the chunk store closes idle chunks and carries on.
//!
//! The only test of its binary, because it lowers the process's descriptor limit.

use tessera_engine::ChunkStore;
use tessera_engine::chunk::FileBudget;

/// The budget is far above what the process may open (a wrong configuration, or descriptors
/// taken by sockets): every open that meets EMFILE sheds idle chunks and succeeds, so the
/// writes land and read back instead of failing the node.
#[test]
fn running_out_of_descriptors_closes_idle_chunks_instead_of_failing() {
    let limit = libc::rlimit {
        rlim_cur: 128,
        rlim_max: 128,
    };
    // SAFETY: setrlimit reads the struct passed by reference; it only lowers this
    // process's own limit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    let tmp = tempfile::tempdir().unwrap();
    let budget = FileBudget::new(10_000);
    let store = ChunkStore::open_in(tmp.path(), &budget).unwrap();
    for chunk in 0..1_000u64 {
        store
            .write(1, chunk, 0, &chunk.to_le_bytes())
            .unwrap_or_else(|e| panic!("write to chunk {chunk}: {e}"));
        store.start_writeback();
    }
    assert!(budget.stats().closed > 0, "{:?}", budget.stats());
    assert!(budget.stats().open < 64, "{:?}", budget.stats());
    store.sync().unwrap();
    for chunk in 0..1_000u64 {
        assert_eq!(
            &store.read(1, chunk, 0, 8).unwrap()[..],
            chunk.to_le_bytes()
        );
    }
}
