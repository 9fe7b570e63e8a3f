//! `git-ax`: git runs it for `git ax …`.

fn main() {
    ax_cli::main()
}
