//! Did-you-mean hints: the known name closest to a misspelt one, for the diagnostics of every
//! phase that compiles names (keys, operators, helpers).

/// The closest known name to a misspelt one, for "did you mean" hints.
pub fn did_you_mean<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    known
        .into_iter()
        .map(|k| {
            (
                strsim::jaro_winkler(&wrong.to_lowercase(), &k.to_lowercase()),
                k,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("did you mean `{k}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_close_names_only() {
        let known = ["timeout", "retries", "headers"];
        assert_eq!(
            did_you_mean("timout", known).as_deref(),
            Some("did you mean `timeout`?")
        );
        assert_eq!(did_you_mean("zzz", known), None);
    }
}
