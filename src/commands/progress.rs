//! Progress bars: shown on a terminal only, and never with `--quiet`. The library reports
//! progress through callbacks (`on_block` of [`converse::restore::Restorer::restore`],
//! [`converse::download::Progress`]); the bars here are what the commands pass it.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// The bars of a `restore` run: the images done (for more than one), and the steps of the
/// current image, with its name and ETA.
pub struct RestoreBars {
    images: Option<ProgressBar>,
    image: ProgressBar,
    multi: Option<MultiProgress>,
}

impl RestoreBars {
    pub fn new(images: u64, quiet: bool) -> Self {
        let shown = !quiet && std::io::stderr().is_terminal();
        let style = |t: &str| {
            ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        let image = if shown {
            ProgressBar::new(0).with_style(style(
                "{bar:30.cyan/blue} {percent:>3}% {wide_msg} [{elapsed_precise} < {eta_precise}]",
            ))
        } else {
            ProgressBar::hidden()
        };
        if images < 2 {
            return Self {
                images: None,
                image,
                multi: None,
            };
        }
        let all = if shown {
            ProgressBar::new(images).with_style(style("{bar:30.green/blue} {pos}/{len} images"))
        } else {
            ProgressBar::hidden()
        };
        let multi = shown.then(|| {
            let m = MultiProgress::new();
            let all = m.add(all.clone());
            m.add(image.clone());
            all.tick();
            m
        });
        Self {
            images: Some(all),
            image,
            multi,
        }
    }

    /// Starts an image of `steps` steps; returns the callback that moves its bar a step.
    pub fn start(&self, name: String, steps: u64) -> impl Fn() + 'static {
        self.image.reset();
        self.image.set_length(steps.max(1));
        self.image.set_message(name);
        let bar = self.image.clone();
        move || bar.inc(1)
    }

    /// The current image is done (restored, skipped or failed).
    pub fn done(&self) {
        self.image.set_position(self.image.length().unwrap_or(0));
        if let Some(all) = &self.images {
            all.inc(1)
        }
    }

    /// Prints without tearing the bars.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.multi {
            Some(m) => m.suspend(f),
            None => self.image.suspend(f),
        }
    }

    pub fn finish(&self) {
        self.image.finish_and_clear();
        if let Some(all) = &self.images {
            all.finish_and_clear()
        }
    }
}

/// A bar over `total` items: done/total, the current name, elapsed time and ETA.
pub fn bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} {wide_msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// A bar over the bytes of the download `msg` (`total` when the size is known): transferred,
/// rate and ETA; hidden when stderr is not a terminal, and cleared when dropped. A
/// [`converse::download::Progress`].
pub fn download_bar(msg: &str, total: Option<u64>) -> Box<dyn Fn(u64)> {
    let pb = bytes_bar(total, msg.to_owned());
    Box::new(move |n| pb.inc(n))
}

fn bytes_bar(total: Option<u64>, msg: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
    }
    let template = if total.is_some() {
        "{msg} {bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} [{eta}]"
    } else {
        "{msg} {spinner} {bytes} {binary_bytes_per_sec}"
    };
    let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.with_message(msg).with_finish(ProgressFinish::AndClear)
}
