//! ax end-to-end tests (see tests/tests/).
