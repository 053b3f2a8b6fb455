//! The instrumented form of the modules a worker thread ran lately, so that a worker's module is
//! parsed and instrumented once, not at every job.
//!
//! Instrumenting parses the module with Boa's parser, walks it, and re-parses the result to
//! confirm text-placed guards: for a 100 KB module that costs several times what Boa's own parse
//! and compile of the module cost (Callgrind, `cargo bench -p mechanics-core --bench engine`).
//! Every job of a worker runs the same source, so the result is kept per thread, keyed by the
//! source text itself (no hash collision can hand a job another module's code).
//!
//! Reusing one instrumentation, with the same budget and tick names, across jobs keeps the limits'
//! safety: the names are still proved absent from the source, and what makes them unusable is
//! that no code is compiled from strings, not that they change. Each job still runs in a fresh
//! context, so nothing a job does reaches the next.

use std::collections::HashMap;
use std::rc::Rc;

use super::instrument::{self, InstrumentError, Instrumented};

/// At most this many modules are kept per thread...
const MAX_ENTRIES: usize = 64;
/// ...and at most this many bytes of source and instrumented text together. Past either bound the
/// cache starts over: a thread serving more distinct modules than this gains little from it.
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Source text → its instrumented form, for one worker thread.
#[derive(Default)]
pub(crate) struct InstrumentedCache {
    entries: HashMap<Box<str>, Rc<Instrumented>>,
    bytes: usize,
}

impl InstrumentedCache {
    /// The instrumented form of `source`, instrumented now (with names made from `suffix`) unless
    /// this thread has done it before. Errors are not kept: a module that does not parse fails
    /// its job quickly anyway.
    pub(crate) fn get_or_instrument(
        &mut self,
        source: &str,
        suffix: u64,
    ) -> Result<Rc<Instrumented>, InstrumentError> {
        if let Some(found) = self.entries.get(source) {
            return Ok(Rc::clone(found));
        }
        let instrumented = Rc::new(instrument::instrument(source, suffix)?);
        let size = source.len() + instrumented.source.len();
        if size > MAX_BYTES {
            return Ok(instrumented);
        }
        if self.entries.len() >= MAX_ENTRIES || self.bytes + size > MAX_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.insert(source.into(), Rc::clone(&instrumented));
        Ok(instrumented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_is_instrumented_once_and_reused() {
        let mut cache = InstrumentedCache::default();
        let source = "export default (a) => { let s = 0; for (const x of a) s += x; return s }";
        let first = cache.get_or_instrument(source, 1).expect("instruments");
        let again = cache.get_or_instrument(source, 2).expect("instruments");
        assert!(
            Rc::ptr_eq(&first, &again),
            "the second job must reuse the first instrumentation"
        );
        let other = cache
            .get_or_instrument("export default () => 1", 3)
            .expect("instruments");
        assert!(!Rc::ptr_eq(&first, &other));
    }

    #[test]
    fn the_cache_starts_over_past_its_bounds_and_keeps_no_errors() {
        let mut cache = InstrumentedCache::default();
        for i in 0..=MAX_ENTRIES {
            let source = format!("export default () => {i}");
            cache.get_or_instrument(&source, 7).expect("instruments");
        }
        assert_eq!(
            cache.entries.len(),
            1,
            "the 65th module starts the cache over"
        );
        assert!(cache.get_or_instrument("export default (", 7).is_err());
        assert!(cache.get_or_instrument("export default (", 7).is_err());
        assert_eq!(
            cache.entries.len(),
            1,
            "a module that does not parse is not kept"
        );
        let total: usize = cache
            .entries
            .iter()
            .map(|(k, v)| k.len() + v.source.len())
            .sum();
        assert_eq!(cache.bytes, total);
    }
}
