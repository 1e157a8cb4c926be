fn main() {
    eprintln!("chatpipe-processor: not built yet");
    std::process::exit(2);
}
