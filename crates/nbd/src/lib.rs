//! An NBD server (newstyle fixed handshake) exporting Tessera volumes through the client library.
