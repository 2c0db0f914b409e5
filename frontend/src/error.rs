//! The crate's one error type.

/// Everything that can go wrong turning a Dockerfile into a build graph. Every message names the
/// Dockerfile, the line and (when there is one) the instruction, and says how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text cannot be parsed (directives, heredocs, JSON arrays, empty file).
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// Dockerfile name.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An instruction is wrong: unknown, bad flag, bad arguments, failed expansion, unknown stage.
    #[error("{file}:{line}: {instruction}: {message}")]
    Instruction {
        /// Dockerfile name.
        file: String,
        /// 1-based start line of the instruction.
        line: usize,
        /// The instruction as written (shortened).
        instruction: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A problem with the Dockerfile as a whole or with the build options (`--target`, no FROM).
    #[error("{file}: {message}")]
    Build {
        /// Dockerfile name.
        file: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl Error {
    pub(crate) fn syntax(file: &str, line: usize, message: impl Into<String>) -> Error {
        Error::Syntax {
            file: file.into(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn instruction(line: usize, instruction: &str, message: impl Into<String>) -> Error {
        let one_line: String = instruction.split_whitespace().collect::<Vec<_>>().join(" ");
        let short = if one_line.chars().count() > 60 {
            let s: String = one_line.chars().take(57).collect();
            format!("{s}...")
        } else {
            one_line
        };
        Error::Instruction {
            file: "Dockerfile".into(),
            line,
            instruction: short,
            message: message.into(),
        }
    }

    pub(crate) fn build(message: impl Into<String>) -> Error {
        Error::Build {
            file: "Dockerfile".into(),
            message: message.into(),
        }
    }

    /// The same error naming `name` as the Dockerfile.
    pub fn with_file(mut self, name: &str) -> Error {
        match &mut self {
            Error::Syntax { file, .. }
            | Error::Instruction { file, .. }
            | Error::Build { file, .. } => *file = name.to_string(),
        }
        self
    }

    /// The 1-based line the error is about, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Syntax { line, .. } | Error::Instruction { line, .. } => Some(*line),
            Error::Build { .. } => None,
        }
    }
}
