//! The `train_converse2d` example learns: a short run of its training loop, and the loss falls.

#[path = "../examples/train_converse2d.rs"]
mod example;

#[test]
fn the_example_network_learns() {
    let losses = example::train(40, false).unwrap();
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let (first, last) = (mean(&losses[..5]), mean(&losses[35..]));
    println!("mean loss of steps 0-4 {first:.6}, of steps 35-39 {last:.6}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(last < 0.5 * first, "{losses:?}");
}
