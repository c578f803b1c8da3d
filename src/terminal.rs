//! The binary's [`Progress`]: what a person sees on stderr while a command runs.
//!
//! Why it exists: the library reports progress through a trait and never prints;
//! this is the one place that decides how it looks. On a terminal: a progress bar;
//! off a terminal (CI logs, `nohup`): one plain line every few seconds; `--quiet`:
//! nothing (warnings are in the run's `metrics.json` all the same). Every line goes through [`clean`], so a file name holding
//! control characters cannot rewrite the terminal or a CI log.

use std::io::IsTerminal;
use std::time::Instant;

use vit_batch::progress::Progress;

/// Seconds between plain progress lines off a terminal.
const PLAIN_EVERY_S: f64 = 5.0;

/// Progress on stderr.
pub struct Terminal {
    quiet: bool,
    /// Prefix of every line ("vit-batch", "vit-batch run").
    prefix: &'static str,
    bar: Option<indicatif::ProgressBar>,
    unit: String,
    total: u64,
    done: u64,
    advanced: u64,
    last: Instant,
    started: Instant,
}

impl Terminal {
    /// Progress on stderr; `quiet` shows nothing.
    pub fn new(quiet: bool, prefix: &'static str) -> Self {
        Terminal {
            quiet,
            prefix,
            bar: None,
            unit: String::new(),
            total: 0,
            done: 0,
            advanced: 0,
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    fn line(&self, msg: &str) {
        let msg = clean(msg);
        match &self.bar {
            Some(b) => b.println(format!("{}: {msg}", self.prefix)),
            None => eprintln!("{}: {msg}", self.prefix),
        }
    }
}

impl Progress for Terminal {
    fn start(&mut self, unit: &str, total: u64, done: u64) {
        self.unit = unit.to_string();
        self.total = total;
        self.done = done;
        self.advanced = 0;
        self.started = Instant::now();
        self.last = Instant::now();
        if self.quiet || !std::io::stderr().is_terminal() {
            return;
        }
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}"
        )) {
            b.set_style(style);
        }
        b.set_position(done);
        self.bar = Some(b);
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        self.advanced += n;
        if let Some(b) = &self.bar {
            b.set_position(self.done);
            return;
        }
        if self.quiet {
            return;
        }
        let due = self.last.elapsed().as_secs_f64() >= PLAIN_EVERY_S;
        if due || self.done == self.total {
            self.last = Instant::now();
            let rate = self.advanced as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta = self.total.saturating_sub(self.done) as f64 / rate.max(1e-9);
            let per = if self.unit == "images" {
                "img"
            } else {
                &self.unit
            };
            self.line(&format!(
                "{}/{} {} ({:.1}%), {rate:.1} {per}/s, ETA {eta:.0}s",
                self.done,
                self.total,
                self.unit,
                100.0 * self.done as f64 / self.total.max(1) as f64,
            ));
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn note(&mut self, msg: &str) {
        if !self.quiet {
            self.line(msg);
        }
    }

    fn warn(&mut self, msg: &str) {
        if !self.quiet {
            self.line(&format!("warning: {msg}"));
        }
    }
}

/// `s` with every control character (ESC, CR, BEL, ...) but none of the printable
/// text escaped as `\u{..}`, so that it prints on one line and moves no cursor.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("a\u{1b}[2Kb\rc"), "a\\u{1b}[2Kb\\rc");
        assert_eq!(clean("plain é"), "plain é");
    }
}
