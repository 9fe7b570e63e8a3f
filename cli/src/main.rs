fn main() {
    ax_cli::main()
}
