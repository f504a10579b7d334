//! Progress bars: shown on a terminal only, and never with `--quiet`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

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

/// A bar over bytes (`total` when the size is known): transferred, rate and ETA; hidden when
/// stderr is not a terminal, and cleared when dropped.
pub fn bytes_bar(total: Option<u64>, msg: String) -> ProgressBar {
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
