//! The storage-node service: hosts replica groups, serves the data plane, registers and heartbeats to the manager.
