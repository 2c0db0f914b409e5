//! The input of the parse benchmark: a Dockerfile of a given length that uses every part of the
//! syntax (directives, global ARGs, stages, continuations, heredocs, JSON and shell forms, flags,
//! ENV/LABEL pairs, ONBUILD, HEALTHCHECK).

/// A Dockerfile of exactly `lines` lines (at least 20).
pub fn dockerfile(lines: usize) -> String {
    let mut out = vec![
        "# syntax=docker/dockerfile:1".to_string(),
        "# check=error=true".to_string(),
        "ARG BASE=busybox".to_string(),
        "ARG TAG=local".to_string(),
        "FROM ${BASE}:${TAG} AS stage0".to_string(),
    ];
    // Each block is 15 lines.
    let block = |i: usize| -> Vec<String> {
        vec![
            format!("ENV VERSION_{i}=1.{i} PATH_{i}=\"/opt/app{i}/bin:$PATH\" \\"),
            format!("    HOME_{i}=/home/u{i}"),
            format!("LABEL org.example.block=\"{i}\" maintainer=\"team {i}\""),
            format!("ARG OPT_{i}=${{VERSION_{i}:-0}}"),
            format!("RUN --mount=type=cache,target=/var/cache/{i},sharing=locked \\"),
            format!("    set -eux; mkdir -p /opt/app{i} && \\"),
            format!("    echo \"building ${{OPT_{i}}}\" > /opt/app{i}/version"),
            format!("COPY --chown=1000:1000 --chmod=0644 src/{i}/*.conf /etc/app{i}/"),
            format!("RUN <<EOF{i}"),
            format!("echo heredoc {i} > /tmp/h{i}"),
            format!("EOF{i}"),
            format!("WORKDIR /opt/app{i}"),
            format!(
                "HEALTHCHECK --interval=30s --retries=3 CMD [\"/opt/app{i}/check\", \"--quick\"]"
            ),
            format!("ONBUILD RUN echo triggered {i}"),
            format!("EXPOSE {}/tcp {}/udp", 8000 + i % 1000, 9000 + i % 1000),
        ]
    };
    let mut i = 0;
    while out.len() + 15 + 2 <= lines {
        if i > 0 && i % 50 == 0 {
            out.push(format!("FROM stage{} AS stage{}", i / 50 - 1, i / 50));
        } else {
            out.extend(block(i));
        }
        i += 1;
    }
    out.push("USER 1000:1000".into());
    while out.len() < lines - 1 {
        out.push("# filler comment".into());
    }
    out.push("CMD [\"/bin/sh\"]".into());
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn has_the_requested_length_and_parses() {
        let text = super::dockerfile(5000);
        assert_eq!(text.lines().count(), 5000);
        let df = rbuild_frontend::parse(&text).unwrap();
        assert!(df.instructions.len() > 3000, "{}", df.instructions.len());
    }
}
