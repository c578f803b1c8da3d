//! How long-running library calls tell their caller what is happening.
//!
//! Why it exists: the library never prints. `score`, `train`, `merge` and pipelines
//! report progress, notes and warnings through this trait; the binary implements it
//! with a progress bar on a terminal and plain lines otherwise, tests and other
//! callers pass [`Silent`] or collect the messages. Warnings that matter after the
//! run are also recorded in its outputs (`metrics.json`), not only reported here.

/// Receives progress from a long-running library call. Every method has a default
/// that does nothing, so an implementation overrides only what it shows.
pub trait Progress {
    /// Work of `total` items starts, `done` of them already finished earlier (a
    /// resumed run). `unit` names the items ("images", "steps").
    fn start(&mut self, _unit: &str, _total: u64, _done: u64) {}
    /// `n` more items are finished.
    fn advance(&mut self, _n: u64) {}
    /// The work started by [`Progress::start`] is over.
    fn finish(&mut self) {}
    /// Information for the user ("resuming: 512 of 1024 rows committed").
    fn note(&mut self, _msg: &str) {}
    /// Something the user should look at; the run goes on.
    fn warn(&mut self, _msg: &str) {}
}

/// Shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}

/// Keeps every note and warning (for tests and for callers that log elsewhere).
#[derive(Debug, Default, Clone)]
pub struct Collect {
    /// Notes, in order.
    pub notes: Vec<String>,
    /// Warnings, in order.
    pub warnings: Vec<String>,
    /// Items finished, as counted by [`Progress::advance`].
    pub advanced: u64,
}

impl Progress for Collect {
    fn advance(&mut self, n: u64) {
        self.advanced += n;
    }
    fn note(&mut self, msg: &str) {
        self.notes.push(msg.to_string());
    }
    fn warn(&mut self, msg: &str) {
        self.warnings.push(msg.to_string());
    }
}
