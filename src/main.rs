fn main() -> std::process::ExitCode {
    redis_node_tuner::cli::main()
}
