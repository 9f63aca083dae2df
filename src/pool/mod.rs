//! Upstream connections: one [`pool::Pool`] per (database, upstream user, target), each made of
//! [`server::ServerConn`]s.

pub mod audit;
pub mod database;
pub mod health;
pub mod notify;
#[allow(clippy::module_inception)]
pub mod pool;
pub mod rates;
pub mod server;
pub mod tenants;
pub mod twophase;

pub use database::{Database, PoolName};
pub use pool::{Checkout, CheckoutError, Pool};
pub use server::{AppliedSettings, ConnectOptions, ServerConn, ServerError};
