use std::collections::HashMap;

fn main() {
    let mut counts: HashMap<&str, u32> = HashMap::new();
    let total: u32 = (1..=100).inspect(|_| *counts.entry("n").or_insert(0) += 1).sum();
    assert_eq!(counts["n"], 100);
    println!("hello from rust: {}", total);
}
