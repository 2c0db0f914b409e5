//! Word expansion and splitting on arbitrary words, with both escape characters and every lexer
//! flag combination chosen by the first input byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild_frontend::shell::Lexer;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(word) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lex = Lexer::new(if mode & 1 == 0 { '\\' } else { '`' });
    lex.raw_quotes = mode & 2 != 0;
    lex.raw_escapes = mode & 4 != 0;
    lex.skip_process_quotes = mode & 8 != 0;
    lex.skip_unset_env = mode & 16 != 0;
    let env = |k: &str| match k {
        "A" => Some("a b  c".to_string()),
        "EMPTY" => Some(String::new()),
        "PAT" => Some("*.tar.gz".to_string()),
        "Q" => Some("'\"$x\\".to_string()),
        _ => None,
    };
    let _ = lex.process_word(word, &env);
    let _ = lex.process_words(word, &env);
});
