//! What every handler can reach.

use std::sync::{Arc, Weak};

use shardcron_core::clock::SharedClock;
use shardcron_runtime::{Cluster, Instance};
use shardcron_store::HistoryStore;

use crate::auth::Auth;
use crate::metrics::Metrics;

/// The console's view of one namespace.
#[derive(Debug)]
pub struct ConsoleState {
    /// Jobs, flags, requests: the registry as the API changes it.
    pub cluster: Cluster,
    /// The execution history and the audit log.
    pub history: HistoryStore,
    /// The instance of the node serving the console, if any (`shardcron console`
    /// serves without one). Weak, so open connections never keep a node alive.
    pub instance: Option<Weak<Instance>>,
    /// Logins, sessions, API tokens.
    pub auth: Auth,
    /// Counters of the node serving the console, for `/metrics`.
    pub metrics: Option<Arc<Metrics>>,
    /// Wall clock.
    pub clock: SharedClock,
}

/// Shared state of the router.
pub type AppState = Arc<ConsoleState>;

impl ConsoleState {
    /// The local instance, while it runs.
    pub fn instance(&self) -> Option<Arc<Instance>> {
        self.instance.as_ref().and_then(Weak::upgrade)
    }
}
