//! Nodes launched by name at run time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::node::DynRunner;
use crate::{NodeRunner, NodeSnapshot, RestartPolicy, RuntimeError, Supervisor};

type Factory = Arc<dyn Fn() -> Arc<dyn DynRunner> + Send + Sync>;

struct Registration {
    policy: RestartPolicy,
    factory: Factory,
}

/// Registers node factories by name and launches, stops and lists their nodes on demand. A
/// launched node is supervised under the factory's name. Cheap to clone.
#[derive(Clone)]
pub struct Launcher {
    supervisor: Supervisor,
    factories: Arc<Mutex<BTreeMap<String, Registration>>>,
}

/// One registered factory and its node, if launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEntry {
    /// The factory's (and its node's) name.
    pub name: String,
    /// The node's snapshot while it is supervised (running, backing off, tripped or ended but
    /// not yet stopped).
    pub node: Option<NodeSnapshot>,
}

impl Launcher {
    /// A launcher whose nodes `supervisor` runs.
    pub fn new(supervisor: Supervisor) -> Self {
        Launcher {
            supervisor,
            factories: Arc::default(),
        }
    }

    /// Registers (or replaces) the factory `name` under the supervisor's default policy.
    pub fn register<R, F>(&self, name: &str, factory: F)
    where
        R: NodeRunner,
        F: Fn() -> R + Send + Sync + 'static,
    {
        self.register_with_policy(
            name,
            self.supervisor.config().restart_policy.clone(),
            factory,
        );
    }

    /// Registers (or replaces) the factory `name` with its own restart policy. A node already
    /// launched keeps running as it was built.
    pub fn register_with_policy<R, F>(&self, name: &str, policy: RestartPolicy, factory: F)
    where
        R: NodeRunner,
        F: Fn() -> R + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || Arc::new(factory()));
        self.factories()
            .insert(name.to_owned(), Registration { policy, factory });
    }

    /// Forgets the factory `name`; returns whether it was registered. Its node, if launched,
    /// keeps running until [`stop`](Self::stop)ped.
    pub fn unregister(&self, name: &str) -> bool {
        self.factories().remove(name).is_some()
    }

    /// Builds a node with the factory `name` and starts supervising it.
    pub fn launch(&self, name: &str) -> Result<(), RuntimeError> {
        let (policy, factory) = {
            let factories = self.factories();
            let registration = factories
                .get(name)
                .ok_or_else(|| RuntimeError::UnknownFactory(name.to_owned()))?;
            (registration.policy.clone(), registration.factory.clone())
        };
        self.supervisor.add_dyn(name, factory(), policy, None)
    }

    /// Stops the node `name` and returns its final snapshot.
    pub async fn stop(&self, name: &str) -> Result<NodeSnapshot, RuntimeError> {
        self.supervisor.stop(name).await
    }

    /// Every registered factory, by name, with its node.
    pub fn list(&self) -> Vec<LaunchEntry> {
        let names: Vec<String> = self.factories().keys().cloned().collect();
        names
            .into_iter()
            .map(|name| {
                let node = self.supervisor.snapshot(&name);
                LaunchEntry { name, node }
            })
            .collect()
    }

    fn factories(&self) -> MutexGuard<'_, BTreeMap<String, Registration>> {
        // Inserts and removes are single calls: a poisoned map is still consistent.
        self.factories
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
