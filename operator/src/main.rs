fn main() {
    eprintln!("chatpipe-operator: not built yet");
    std::process::exit(2);
}
