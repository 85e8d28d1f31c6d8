fn main() {
    std::process::exit(llm_router::cli::main());
}
