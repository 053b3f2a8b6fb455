//! The workers, cached in memory and reloaded when the store's registry version moves: every API
//! change bumps it in-process, so a change made with the CLI reaches the dispatcher without a
//! restart and without polling.

use std::collections::HashMap;
use std::sync::Arc;

use mechanics_proto::domain::Worker;
use mechanics_store::Store;
use tokio::sync::RwLock;

/// Workers by name.
pub(crate) type Workers = Arc<HashMap<String, Arc<Worker>>>;

/// The cached registry: the workers as of a registry version.
pub(crate) struct Registry {
    store: Arc<dyn Store>,
    cache: RwLock<(Option<u64>, Workers)>,
}

impl Registry {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: RwLock::new((None, Arc::new(HashMap::new()))),
        }
    }

    /// Every worker, as of the store's current registry version.
    pub(crate) async fn all(&self) -> Workers {
        let version = self.store.registry_version();
        {
            let cache = self.cache.read().await;
            if cache.0 == Some(version) {
                return cache.1.clone();
            }
        }
        let mut cache = self.cache.write().await;
        if cache.0 == Some(version) {
            return cache.1.clone();
        }
        match self.store.list_workers().await {
            Ok(workers) => {
                let map: HashMap<String, Arc<Worker>> = workers
                    .into_iter()
                    .map(|w| (w.spec.name.clone(), Arc::new(w)))
                    .collect();
                *cache = (Some(version), Arc::new(map));
            }
            Err(err) => {
                tracing::error!(error = %err, "reloading the workers failed; using the last list")
            }
        }
        cache.1.clone()
    }

    /// The worker called `name`.
    pub(crate) async fn get(&self, name: &str) -> Option<Arc<Worker>> {
        self.all().await.get(name).cloned()
    }
}
