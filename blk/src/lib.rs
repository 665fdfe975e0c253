//! Block transports for pmvisor (SPEC §5): the `BlockDevice` trait that the
//! root crate implements over block regions, an NBD server and a ublk target.
