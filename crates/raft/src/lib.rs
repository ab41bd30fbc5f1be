//! Multi-Raft on raft-rs: the batch system that drives every replica group of a node, group commit through the shared log, peer message batching.
