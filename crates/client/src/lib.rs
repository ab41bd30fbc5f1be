//! The Tessera client library: volume handles, routing, retries, pipelined requests to storage nodes.
