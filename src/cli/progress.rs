//! A step progress bar on stderr, shown only when stderr is a terminal (logs stay clean).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over UNet calls.
pub struct StepBar {
    bar: Option<ProgressBar>,
    label: &'static str,
}

impl StepBar {
    /// A bar that stays hidden unless stderr is a terminal.
    pub fn new(label: &'static str) -> Self {
        Self { bar: None, label }
    }

    /// Records `done` of `total` steps.
    pub fn update(&mut self, done: usize, total: usize) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let label = self.label;
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps {elapsed}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label);
            b
        });
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
        }
    }
}
