fn main() {
    eprintln!("chatpipe-ingest: not built yet");
    std::process::exit(2);
}
