//! End-to-end tests of the `chrysalis` binaries, driven as a user drives them.
#![forbid(unsafe_code)]
