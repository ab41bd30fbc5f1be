//! The storage node's local engine: the log shared by all replica groups, chunk files with per-block CRC32C, data-directory locking. Knows nothing about Raft or the network.
