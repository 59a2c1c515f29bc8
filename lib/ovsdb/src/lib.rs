//! Async OVSDB client (RFC 7047 JSON-RPC over `unix:PATH` or `tcp:HOST:PORT`) and typed
//! Open_vSwitch operations for the CNI plugin and the node-agent.
//!
//! ```no_run
//! # async fn demo() -> leengine_ovsdb::Result<()> {
//! use leengine_ovsdb::Client;
//! let ovs = Client::connect("unix:/var/run/openvswitch/db.sock").await?;
//! ovs.ensure_bridge("br0", "netdev").await?;
//! ovs.add_access_port("br0", "veth1234", Some(100), &Default::default()).await?;
//! let ofport = ovs.wait_ofport("veth1234", std::time::Duration::from_secs(5)).await?;
//! # let _ = ofport; Ok(()) }
//! ```

mod client;
mod codec;
pub mod datum;
mod endpoint;
mod error;
mod monitor;
mod op;
pub mod vswitch;

pub use client::{Client, Options};
pub use endpoint::Endpoint;
pub use error::{OvsdbError, Result, Unavailable};
pub use monitor::{Monitor, MonitorRequest, RowUpdate, TableUpdates};
pub use op::{Cond, Mutation, Op, OpResult, Until};
pub use vswitch::{BondMode, BondStatus, Converge, InterfaceInfo, MemberStatus, PortInfo, DB};
