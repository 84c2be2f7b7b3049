//! End-to-end tests live in `tests/`. This library holds test support shared with the
//! controller's unit tests: [`postgres::TestPostgres`], a throwaway PostgreSQL server.

pub mod postgres;
