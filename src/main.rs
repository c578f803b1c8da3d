fn main() {
    std::process::exit(vit_batch_cli());
}

fn vit_batch_cli() -> i32 {
    0
}
