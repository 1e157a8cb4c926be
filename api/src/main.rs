fn main() {
    eprintln!("chatpipe-api: not built yet");
    std::process::exit(2);
}
