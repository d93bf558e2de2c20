//! The [`Registry`]: job kinds by their stable name, as the pool runs them and the API
//! accepts them. It owns the name-to-handler map and the refusal of a name registered twice;
//! it does not own what a kind is ([`Handler`], [`Kind`]) or how a payload is parsed
//! (`crate::kind`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::handler::Handler;
use crate::kind::{Kind, KindHandler};

/// Error from [`Registry::add`] and [`Registry::register`].
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("job kind {0:?} is registered twice")]
    Duplicate(String),
}

/// Job kinds by name: what the pool can run and what the API accepts.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a typed kind under its [`Kind::NAME`].
    ///
    /// ```
    /// # use hopper_workers::{Registry, diagnostics::Noop};
    /// let mut registry = Registry::new();
    /// registry.add(Noop)?;
    /// assert!(registry.get("sys.noop").is_some());
    /// # Ok::<(), hopper_workers::registry::RegistryError>(())
    /// ```
    pub fn add<K: Kind>(&mut self, kind: K) -> Result<(), RegistryError> {
        self.register(K::NAME, KindHandler::new(kind))
    }

    /// Registers `handler` for `kind` (a stable dotted name such as `email.send`): for
    /// handlers that read the raw payload themselves; a typed kind goes through
    /// [`Registry::add`].
    pub fn register(
        &mut self,
        kind: impl Into<String>,
        handler: impl Handler,
    ) -> Result<(), RegistryError> {
        let kind = kind.into();
        if self.handlers.contains_key(&kind) {
            return Err(RegistryError::Duplicate(kind));
        }
        self.handlers.insert(kind, Arc::new(handler));
        Ok(())
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(kind)
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}
