//! `revattn tasks`: the synthetic ICL suite is deterministic, tokenizes as function_vectors'
//! template does with GPT-2, is ambiguous across tasks, keeps extractive test lists unseen, and
//! round-trips through its files; bad inputs give one-line errors and no partial output.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use revattn::tasks::{self, Pair, Task, TaskKind, TaskSuite};
use revattn::tokenizer::Gpt2Tokenizer;
use revattn::Error;

fn revattn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_revattn"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("revattn runs")
}

/// Every file under `dir`, relative path → bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn one_line(e: &Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s:?}");
    s
}

fn suite() -> TaskSuite {
    tasks::generate(0)
}

/// The six tasks, in suite order.
const TASKS: [&str; 6] = [
    "antonym",
    "translation",
    "category",
    "country",
    "color",
    "size",
];

/// An extractive task in function_vectors' format (`"w1, w2, w3"` → the last word) over the
/// suite's words, as another tool could write it: `load` and the episode code accept those.
fn last_word_task(s: &TaskSuite) -> Task {
    let pairs: Vec<Pair> = s
        .words
        .chunks_exact(3)
        .map(|w| Pair::new(w.join(", "), w[2].clone()))
        .collect();
    let (train, test) = tasks::split(s.seed, TaskKind::Extractive, &pairs);
    Task {
        name: "last".into(),
        kind: TaskKind::Extractive,
        description: "the last word of a list".into(),
        pairs,
        train,
        test,
    }
}

#[test]
fn same_seed_same_files_other_seed_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    tasks::write(&tasks::generate(7), &a).unwrap();
    tasks::write(&tasks::generate(7), &b).unwrap();
    tasks::write(&tasks::generate(8), &c).unwrap();
    let (fa, fb, fc) = (files(&a), files(&b), files(&c));
    let names: Vec<String> = fa
        .keys()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "abstractive/antonym.json",
            "abstractive/category.json",
            "abstractive/color.json",
            "abstractive/country.json",
            "abstractive/size.json",
            "abstractive/translation.json",
            "suite.json",
            "tokenizer.json",
        ]
    );
    assert_eq!(fa, fb, "same seed, same bytes");
    for (name, bytes) in &fa {
        assert_ne!(
            bytes,
            &fc[name],
            "{} is the same for seeds 7 and 8",
            name.display()
        );
    }
    // Nothing but the promised files, and no staging leftovers.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 3);
}

#[test]
fn vocabulary_and_tokenizer() {
    let s = suite();
    assert_eq!(s.words.len(), tasks::NUM_WORDS);
    let distinct: HashSet<&String> = s.words.iter().collect();
    assert_eq!(distinct.len(), s.words.len(), "words are distinct");
    let vowels = |c: char| "aeiou".contains(c);
    for w in &s.words {
        assert!(w.len() == 4 || w.len() == 6, "{w}: 2 or 3 syllables");
        assert!(w.chars().all(|c| c.is_ascii_lowercase()), "{w}");
        for (i, c) in w.chars().enumerate() {
            assert_eq!(vowels(c), i % 2 == 1, "{w}: consonant-vowel syllables");
        }
    }
    let tok = s.tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), tasks::NUM_WORDS + 8);
    assert_eq!(tok.vocab_size(), s.vocab_size());
    assert_eq!(tok.end_of_text().unwrap(), 0);
    for (id, text) in ["<|endoftext|>", "<|unk|>", "Q", "A", ":", ",", "\n", "\n\n"]
        .iter()
        .enumerate()
    {
        assert_eq!(tok.encode(text).unwrap(), [id as u32], "{text:?}");
        assert_eq!(tok.token_text(id as u32), *text);
    }
    for (i, w) in s.words.iter().enumerate() {
        let id = (i + 8) as u32;
        assert_eq!(tok.encode(&format!(" {w}")).unwrap(), [id], "{w:?}");
        assert_eq!(tok.token_text(id), format!(" {w}"));
    }
    // Anything else falls back to <|unk|>.
    assert_eq!(tok.encode(" hello").unwrap(), [1]);
    assert_eq!(tok.encode("Q: 42").unwrap(), [2, 4, 1]);
}

#[test]
fn every_output_is_one_token_and_every_input_word_too() {
    let s = suite();
    let tok = s.tokenizer().unwrap();
    for t in &s.tasks {
        for p in &t.pairs {
            let out = tok.encode(&format!(" {}", p.output)).unwrap();
            assert_eq!(out.len(), 1, "{}: {:?}", t.name, p.output);
            assert!(out[0] >= 8, "{}: {:?} is a word", t.name, p.output);
            let inp = tok.encode(&format!(" {}", p.input)).unwrap();
            match t.kind {
                TaskKind::Abstractive => assert_eq!(inp.len(), 1, "{:?}", p.input),
                TaskKind::Extractive => {
                    assert_eq!(inp.len(), 5, "{:?}", p.input);
                    assert_eq!((inp[1], inp[3]), (5, 5), "commas");
                    assert!([inp[0], inp[2], inp[4]].iter().all(|&i| i >= 8));
                }
            }
        }
    }
}

#[test]
fn decode_encode_round_trip() {
    let s = suite();
    let tok = s.tokenizer().unwrap();
    let size = s.task("size").unwrap();
    let lists = last_word_task(&s);
    let demos: Vec<&Pair> = lists.train.iter().take(3).chain(&size.train[..2]).collect();
    let (text, target) = tasks::prompt(&demos, &lists.test[0]);
    let episode = text.clone() + &target;
    // Episodes packed one after another: the "\n\n" before <|endoftext|> ends a segment and is
    // one token, as in GPT-2.
    let packed = format!("{episode}\n\n{episode}");
    let all_words = format!(" {}", s.words.join(" "));
    for t in [
        text,
        episode,
        packed.clone(),
        "Q:\nA:\n\n".into(),
        all_words,
    ] {
        let ids = tok.encode(&t).unwrap();
        assert!(!ids.contains(&1), "no <|unk|> in {t:?}");
        assert_eq!(tok.decode(&ids), t);
    }
    let ids = tok.encode(&packed).unwrap();
    let half = ids.iter().position(|&i| i == 7).unwrap();
    assert_eq!(ids[half + 1], 0, "\\n\\n then <|endoftext|>");
    assert_eq!(ids[half + 1..], ids[..half]);
}

#[test]
fn template_tokenizes_like_function_vectors_with_gpt2() {
    let s = suite();
    let tok = s.tokenizer().unwrap();
    let ant = s.task("antonym").unwrap();
    let (d1, d2, q) = (&ant.train[0], &ant.train[1], &ant.test[0]);
    let (text, target) = tasks::prompt(&[d1, d2], q);
    assert_eq!(
        text,
        format!(
            "<|endoftext|>Q: {}\nA: {}\n\nQ: {}\nA: {}\n\nQ: {}\nA:",
            d1.input, d1.output, d2.input, d2.output, q.input
        )
    );
    assert_eq!(target, format!(" {}", q.output));

    let id = |w: &str| tok.encode(&format!(" {w}")).unwrap()[0];
    let (bos, qq, aa, colon, nl) = (0, 2, 3, 4, 6);
    let ids = tok.encode(&text).unwrap();
    #[rustfmt::skip]
    let expected = vec![
        bos,
        qq, colon, id(&d1.input), nl, aa, colon, id(&d1.output), nl, nl,
        qq, colon, id(&d2.input), nl, aa, colon, id(&d2.output), nl, nl,
        qq, colon, id(&q.input), nl, aa, colon,
    ];
    assert_eq!(ids, expected);
    // One-token-input demonstrations are 9 tokens; the query part is 6 plus BOS; with the
    // target a prompt is 9·n + 8 tokens (PAPER.md §2.0).
    for n in [0usize, 1, 5, 10] {
        let demos: Vec<&Pair> = ant.train[1..=n].iter().collect();
        let ep = tasks::encode_episode(&tok, &demos, q).unwrap();
        assert_eq!(ep.ids.len(), 9 * n + 8, "n = {n}");
        let positions: Vec<usize> = (0..=n).map(|i| 7 + 9 * i).collect();
        assert_eq!(ep.answer_positions, positions);
        let answers: Vec<u32> = demos.iter().chain([&q]).map(|p| id(&p.output)).collect();
        assert_eq!(ep.answer_ids(), answers);
        assert_eq!(ep.query_logit_position(), ep.ids.len() - 2);
        assert_eq!(*ep.answer_positions.last().unwrap(), ep.ids.len() - 1);
    }
    // List inputs: 5 tokens each, so a demonstration is 13 tokens.
    let last = last_word_task(&s);
    let demos: Vec<&Pair> = last.train[..2].iter().collect();
    let ep = tasks::encode_episode(&tok, &demos, &last.test[0]).unwrap();
    assert_eq!(ep.ids.len(), 13 * 2 + 12);
    assert_eq!(ep.answer_positions, [11, 24, 37]);
}

#[test]
fn encode_episode_rejects_answers_that_are_not_one_token() {
    let tok = suite().tokenizer().unwrap();
    let q = Pair::new("volu", "two words");
    let e = tasks::encode_episode(&tok, &[], &q).unwrap_err();
    assert!(one_line(&e).contains("one-token"), "{e}");
    let d = Pair::new("x\nA: y", "y");
    assert!(tasks::encode_episode(&tok, &[&d], &Pair::new("a", "b")).is_err());
}

#[test]
fn the_same_input_has_different_outputs_across_tasks() {
    let s = suite();
    let names: Vec<&str> = s.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, TASKS);
    assert!(s.tasks.iter().all(|t| t.kind == TaskKind::Abstractive));
    // Every task has exactly the domain as inputs.
    let domain: HashSet<&str> = s.tasks[0].pairs.iter().map(|p| p.input.as_str()).collect();
    assert_eq!(domain.len(), tasks::DOMAIN_SIZE);
    for t in &s.tasks {
        let inputs: HashSet<&str> = t.pairs.iter().map(|p| p.input.as_str()).collect();
        assert_eq!(inputs, domain, "{}", t.name);
        assert_eq!(t.pairs.len(), tasks::DOMAIN_SIZE, "{}", t.name);
    }
    let map = |name: &str| -> HashMap<&str, &str> {
        s.task(name)
            .unwrap()
            .pairs
            .iter()
            .map(|p| (p.input.as_str(), p.output.as_str()))
            .collect()
    };
    // Each task answers from its own words, so every input has six different answers and a
    // 0-shot prompt is ambiguous.
    let answer_sets: Vec<HashSet<&str>> = TASKS
        .iter()
        .map(|&t| map(t).into_values().collect())
        .collect();
    for (i, a) in answer_sets.iter().enumerate() {
        for b in &answer_sets[i + 1..] {
            assert!(a.is_disjoint(b), "two tasks share answer words");
        }
    }
    let maps: Vec<HashMap<&str, &str>> = TASKS.iter().map(|&t| map(t)).collect();
    for x in &domain {
        let outputs: HashSet<&str> = maps.iter().map(|m| m[x]).collect();
        assert_eq!(outputs.len(), TASKS.len(), "{x}");
    }
    // The maps have the promised shapes.
    let (ant, tr) = (&maps[0], &maps[1]);
    for x in &domain {
        assert_ne!(ant[x], *x);
        assert_eq!(ant[ant[x]], *x, "antonym is an involution");
        assert!(!domain.contains(tr[x]), "translations leave the domain");
    }
    assert_eq!(answer_sets[0], domain, "antonyms are domain words");
    assert_eq!(
        answer_sets[1].len(),
        tasks::DOMAIN_SIZE,
        "translation is a bijection"
    );
    for (&(name, n_values), m) in tasks::ATTRIBUTES.iter().zip(&maps[2..]) {
        let mut sizes: HashMap<&str, usize> = HashMap::new();
        for v in m.values() {
            *sizes.entry(v).or_default() += 1;
        }
        assert_eq!(sizes.len(), n_values, "{name}");
        let (lo, hi) = (sizes.values().min().unwrap(), sizes.values().max().unwrap());
        assert!(hi - lo <= 1, "{name}: class sizes {lo}..{hi}");
    }
    // Every word has exactly one role: input, or the answer of one task.
    let used: usize = answer_sets[1..].iter().map(|a| a.len()).sum::<usize>() + domain.len();
    assert_eq!(used, tasks::NUM_WORDS);
}

#[test]
fn splits_follow_the_rule() {
    let s = suite();
    for t in &s.tasks {
        assert_eq!(t.test.len(), tasks::test_count(t.pairs.len()));
        assert_eq!(
            (t.train.clone(), t.test.clone()),
            tasks::split(s.seed, t.kind, &t.pairs)
        );
        assert_eq!(t.train, t.pairs, "{}: all pairs are trained on", t.name);
        assert_eq!(t.test.len(), 15);
        assert!(t.test.iter().all(|p| t.pairs.contains(p)));
    }
    // Extractive tasks (from other tools) hold their test inputs out of training.
    let lists = last_word_task(&s);
    let n = lists.pairs.len();
    assert_eq!(
        (lists.train.len(), lists.test.len()),
        (n - tasks::test_count(n), tasks::test_count(n))
    );
    let mut union: Vec<&Pair> = lists.train.iter().chain(&lists.test).collect();
    union.sort_by(|a, b| a.input.cmp(&b.input));
    let mut pairs: Vec<&Pair> = lists.pairs.iter().collect();
    pairs.sort_by(|a, b| a.input.cmp(&b.input));
    assert_eq!(union, pairs, "train + test = all pairs");
    let train: HashSet<&str> = lists.train.iter().map(|p| p.input.as_str()).collect();
    assert!(lists.test.iter().all(|p| !train.contains(p.input.as_str())));
    assert_eq!(tasks::test_count(48), 15);
    assert_eq!(tasks::test_count(96), 29);
    assert_eq!(tasks::test_count(1000), 300);
    assert_eq!(tasks::test_count(10), 3);
}

#[test]
fn evaluation_prompts_are_deterministic_and_never_show_the_query() {
    let s = suite();
    for t in &s.tasks {
        let a = tasks::eval_prompts(t, 5, s.seed);
        let b = tasks::eval_prompts(t, 5, s.seed);
        assert_eq!(a, b);
        assert_eq!(a.len(), t.test.len());
        for (demos, q) in &a {
            assert_eq!(demos.len(), 5);
            assert!(demos
                .iter()
                .all(|d| d.input != q.input && t.train.contains(d)));
            let distinct: HashSet<&&Pair> = demos.iter().collect();
            assert_eq!(distinct.len(), 5);
        }
        assert_ne!(a, tasks::eval_prompts(t, 5, s.seed + 1));
    }
    let mut rng = tasks::Rng::stream(0, "train");
    let lists = last_word_task(&s);
    for _ in 0..50 {
        let (demos, q) = tasks::train_episode(&lists, 4, &mut rng);
        assert!(lists.train.contains(q) && !lists.test.contains(q));
        assert_eq!(demos.len(), 4);
    }
}

#[test]
fn write_load_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let s = tasks::generate(3);
    tasks::write(&s, &a).unwrap();
    let loaded = tasks::load(&a).unwrap();
    assert_eq!(loaded, s);
    tasks::write(&loaded, &b).unwrap();
    assert_eq!(files(&a), files(&b));
    // tokenizer.json loads through the project's tokenizer as a file too.
    let tok = Gpt2Tokenizer::load_dir(&a).unwrap();
    assert_eq!(tok.vocab_size(), tasks::NUM_WORDS + 8);
    // The pair files are function_vectors' format.
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("abstractive/size.json")).unwrap()).unwrap();
    let first = &v.as_array().unwrap()[0];
    assert_eq!(first.as_object().unwrap().len(), 2);
    assert!(first["input"].is_string() && first["output"].is_string());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("suite.json")).unwrap()).unwrap();
    assert_eq!(meta["seed"], 3);
    assert_eq!(meta["format"], "revattn-tasks/2");
    assert_eq!(meta["vocab_size"], tasks::NUM_WORDS + 8);
    assert_eq!(meta["tasks"].as_array().unwrap().len(), 6);
    assert_eq!(meta["tasks"][5]["name"], "size");
    assert_eq!(meta["tasks"][5]["test"], 15);

    // A suite with an extractive task written by another tool loads, lists and all.
    let mut with_lists = s.clone();
    with_lists.tasks.push(last_word_task(&s));
    let c = tmp.path().join("c");
    tasks::write(&with_lists, &c).unwrap();
    assert!(c.join("extractive/last.json").is_file());
    assert_eq!(tasks::load(&c).unwrap(), with_lists);
}

#[test]
fn bad_suites_give_one_line_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let e = tasks::load(&tmp.path().join("missing")).unwrap_err();
    assert!(one_line(&e).contains("missing"), "{e}");

    let dir = tmp.path().join("suite");
    tasks::write(&tasks::generate(0), &dir).unwrap();
    let corrupt = |file: &str, bytes: &[u8], expect: &str| {
        let path = dir.join(file);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let e = tasks::load(&dir).unwrap_err();
        let msg = one_line(&e);
        assert!(msg.contains(file), "{file}: {msg}");
        assert!(msg.contains(expect), "{file}: {msg}");
        std::fs::write(&path, good).unwrap();
    };
    corrupt("suite.json", b"{not json", "not a valid file");
    corrupt(
        "abstractive/color.json",
        b"[{\"input\": 1}]",
        "not a valid file",
    );
    corrupt("abstractive/size.json", b"[]", "0 pairs");
    corrupt("tokenizer.json", b"{}", "tokenizer.json");
    let known = tasks::generate(0).words[0].clone();
    let two_words = serde_json::to_vec(&[Pair::new(known, "two words")]).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("suite.json")).unwrap()).unwrap();
    let good_meta = serde_json::to_vec(&meta).unwrap();
    meta["tasks"][2]["pairs"] = 1.into();
    std::fs::write(dir.join("suite.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    corrupt(
        "abstractive/category.json",
        &two_words,
        "not one known token",
    );
    std::fs::write(dir.join("suite.json"), good_meta).unwrap();
    tasks::load(&dir).unwrap();
    std::fs::remove_file(dir.join("abstractive/country.json")).unwrap();
    let e = tasks::load(&dir).unwrap_err();
    assert!(one_line(&e).contains("country.json"), "{e}");
    assert!(matches!(e, Error::Io { .. }));
}

#[test]
fn cli_writes_the_suite_and_leaves_nothing_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("deep/suite");
    let o = revattn(&["tasks", "--out", out.to_str().unwrap(), "--seed", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
    for name in TASKS {
        assert!(stdout.contains(&format!("/{name}.json")), "{stdout}");
    }
    assert_eq!(tasks::load(&out).unwrap(), tasks::generate(5));

    // Writing again over a non-empty directory is refused; the directory is unchanged.
    let before = files(&out);
    let o = revattn(&["tasks", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(files(&out), before);

    // An output path under a file: one-line error, nothing left behind.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    for bad in [file.join("suite"), file.clone()] {
        let o = revattn(&["tasks", "--out", bad.to_str().unwrap()]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["deep", "file"]);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("deep")).unwrap().count(),
        1
    );

    // An empty existing directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = revattn(&["tasks", "--out", empty.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(files(&empty).len(), 8);

    let help = revattn(&["tasks", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("tokenizer.json") && help.contains("suite.json"),
        "{help}"
    );
}

#[test]
fn encode_episode_works_with_a_gpt2_byte_level_tokenizer() {
    // The fixture tokenizer is a GPT-2-style byte-level BPE (tests/fixtures/README.md).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-prefixed");
    let tok = Gpt2Tokenizer::load_dir(&dir).unwrap();
    let demos = [Pair::new("France", "Rome"), Pair::new("city", "Florence")];
    let query = Pair::new("Italy", "Rome");
    let refs: Vec<&Pair> = demos.iter().collect();
    let ep = tasks::encode_episode(&tok, &refs, &query).unwrap();
    let (text, target) = tasks::prompt(&refs, &query);
    assert_eq!(ep.ids, tok.encode(&(text + &target)).unwrap());
    let rome = tok.encode(" Rome").unwrap();
    let florence = tok.encode(" Florence").unwrap();
    assert_eq!(ep.answer_ids(), [rome[0], florence[0], rome[0]]);
    assert_eq!(*ep.answer_positions.last().unwrap(), ep.ids.len() - 1);
    for &p in &ep.answer_positions {
        assert_eq!(tok.decode(&ep.ids[p - 3..p]), "\nA:");
    }
}

/// The suite the embedded model was trained on is committed as assets/tasks and is exactly
/// `generate(DEFAULT_SEED)` (what `maps --task` uses when no suite is given).
#[test]
fn the_shipped_suite_is_the_default_seed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tasks");
    let shipped = tasks::load(&dir).expect("assets/tasks loads");
    assert_eq!(shipped, tasks::generate(tasks::DEFAULT_SEED));
    let model = revattn::model::Model::embedded().unwrap();
    assert_eq!(model.config.vocab_size, shipped.vocab_size());
    let tokenizer = std::fs::read(dir.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer, shipped.tokenizer_json);
}
