//! `revattn tasks`: a synthetic in-context-learning (ICL) task suite for training a small GPT-2,
//! in the function_vectors data format (PAPER.md §2.0), deterministic for a seed.
//!
//! # Design
//!
//! **Vocabulary.** [`NUM_WORDS`] made-up pronounceable words (2–3 consonant–vowel syllables,
//! lowercase ASCII, all distinct), generated from the seed. They are split, by a seeded shuffle,
//! into a *domain* of [`DOMAIN_SIZE`] words (the inputs of every task), as many *translation
//! targets*, and the *value words* of each attribute in [`ATTRIBUTES`] (8 + 6 + 5 + 4).
//!
//! **Tokenizer.** A HF `tokenizers` file (tokenizer.json) with a WordLevel model, GPT-2's
//! pre-tokenizer regex (as a `Split` pre-tokenizer, so text splits exactly where GPT-2's does) and
//! a `Fuse` decoder (tokens are concatenated, so `decode(encode(s)) == s` for suite text). Ids:
//! 0 `<|endoftext|>` (special), 1 `<|unk|>` (special, the fallback for anything else),
//! 2 `Q`, 3 `A`, 4 `:`, 5 `,`, 6 `\n`, 7 `\n\n`, then one token per word *with its leading
//! space* (`" kato"`), in vocabulary order: 127 tokens for 119 words. As in GPT-2, `"\n\n"`
//! followed by text is two `"\n"` tokens, so a demonstration is 9 tokens:
//! `Q` `:` ` x` `\n` `A` `:` ` y` `\n` `\n`. The `\n\n` token (GPT-2's 628) only appears where
//! GPT-2 would use it too: text that *ends* in `"\n\n"` (e.g. before an `<|endoftext|>` when
//! episodes are packed into one sequence); without it that would be `<|unk|>`. The `,` token
//! serves list inputs (function_vectors' extractive tasks), which [`load`] accepts.
//!
//! **Tasks.** Six abstractive tasks over the same inputs: *the same input maps to a different
//! output in every task*, so a 0-shot prompt is ambiguous and only the demonstrations say which
//! task is meant. Every map must be learned in the weights, as GPT-2 knows antonyms from
//! pretraining, and every output is one word, i.e. one token:
//! - `antonym`: a fixed random pairing of the domain words with each other (an involution
//!   without fixed points, x ↔ y);
//! - `translation`: a fixed random bijection from the domain onto the translation targets;
//! - `category`, `country`, `color`, `size`: many-to-one maps onto 8, 6, 5 and 4 value words
//!   (a shuffled domain dealt round-robin, so class sizes differ by at most one).
//!
//! Each task answers from its own words, as in most of function_vectors' abstractive tasks
//! (English → French, country → capital, person → sport): the demonstrations tell the tasks
//! apart by what their answers are. Version 1 of the suite also had `copy` (x → x, answered
//! from antonym's words) and three extractive tasks (`first`, `middle`, `last` of a 3-word
//! list), which need a *relation* between a demonstration's question and answer; the 3-layer
//! models trained on it never learned those (assets/default-model/MODEL_CARD.md).
//!
//! **Split (held-out data).** Like sklearn's `train_test_split(test_size=0.3)`: `perm` =
//! Fisher–Yates permutation of `0..n` from the stream `split/<kind>`, `n_test = ceil(0.3·n)`,
//! test = `perm[..n_test]`, rest = `perm[n_test..]` (both in permutation order). See [`split`].
//! - abstractive: the map is knowledge that lives in the weights; a pair never trained on cannot
//!   be predicted. So train = **all** pairs (in file order) and test = the `n_test` shuffled pairs,
//!   used as evaluation *queries*. What is held out for these tasks is the *prompt*: fresh
//!   demonstrations and queries drawn from the evaluation stream ([`eval_prompts`]), which the
//!   trainer never uses (it draws from its own stream, e.g. [`train_episode`]). The test pairs
//!   are therefore a subset of the train pairs, by design.
//! - extractive (suites written by other tools): train = rest, test = the test inputs, disjoint.
//!
//! **Files** (`revattn tasks --out DIR`): `abstractive/<task>.json`
//! (`[{"input": …, "output": …}, …]`), `tokenizer.json`, and `suite.json` (seed, vocabulary,
//! special token ids, template, split rule, tasks with their sizes). [`load`] reads them back (and
//! `extractive/<task>.json` files of suites that have them) and re-derives the split from
//! suite.json's seed; `write(load(dir))` reproduces the files byte for byte.

use std::collections::HashSet;
use std::path::Path;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::output::StagedDir;
use crate::tokenizer::{Gpt2Tokenizer, END_OF_TEXT};

/// suite.json's `format` (2: six abstractive tasks; version 1 also had copy and three
/// extractive tasks).
pub const FORMAT: &str = "revattn-tasks/2";
/// Inputs of every task.
pub const DOMAIN_SIZE: usize = 48;
/// The attribute tasks: (name, number of value words). Each maps every domain word to one of its
/// values, like GPT-2's person → sport or landmark → country.
pub const ATTRIBUTES: [(&str, usize); 4] =
    [("category", 8), ("country", 6), ("color", 5), ("size", 4)];
/// Made-up words in the vocabulary (each one token): the domain, the translation targets and
/// every attribute's values.
pub const NUM_WORDS: usize = 2 * DOMAIN_SIZE + 8 + 6 + 5 + 4;
/// Test share of the split, in percent (sklearn's test_size=0.3).
pub const TEST_PERCENT: usize = 30;
/// The tokenizer's fallback token.
pub const UNKNOWN: &str = "<|unk|>";
/// The tokens before the words, at ids 0.. in this order.
pub const STRUCTURAL_TOKENS: [&str; 8] = [END_OF_TEXT, UNKNOWN, "Q", "A", ":", ",", "\n", "\n\n"];
/// GPT-2's pre-tokenizer regex (the one its byte-level pre-tokenizer uses).
pub const GPT2_SPLIT_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
const VOWELS: &[u8] = b"aeiou";

/// One example, as in function_vectors' files. `output` is a single word.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pair {
    pub input: String,
    pub output: String,
}

impl Pair {
    pub fn new(input: impl Into<String>, output: impl Into<String>) -> Self {
        Pair {
            input: input.into(),
            output: output.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Single-word input, output from a map learned in the weights.
    Abstractive,
    /// List input, output is one of its words.
    Extractive,
}

impl TaskKind {
    /// The folder name: `abstractive` or `extractive`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Abstractive => "abstractive",
            TaskKind::Extractive => "extractive",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub name: String,
    pub kind: TaskKind,
    /// One line saying what the task is.
    pub description: String,
    /// Every pair, in file order (what `<kind>/<name>.json` holds).
    pub pairs: Vec<Pair>,
    /// Pairs to train on: all pairs for abstractive tasks, the 70% split for extractive ones.
    pub train: Vec<Pair>,
    /// Evaluation queries: the 30% split (a subset of `train` for abstractive tasks, disjoint
    /// from it for extractive ones). See the module doc.
    pub test: Vec<Pair>,
}

impl Task {
    /// The task file's path inside the suite directory, e.g. `abstractive/copy.json`.
    pub fn file(&self) -> String {
        format!("{}/{}.json", self.kind, self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskSuite {
    pub seed: u64,
    /// The made-up words, in token order (word `i` is token `STRUCTURAL_TOKENS.len() + i`).
    pub words: Vec<String>,
    pub tasks: Vec<Task>,
    /// tokenizer.json's bytes (load with [`Gpt2Tokenizer::from_bytes`] or [`TaskSuite::tokenizer`]).
    pub tokenizer_json: Vec<u8>,
}

impl TaskSuite {
    pub fn tokenizer(&self) -> Result<Gpt2Tokenizer> {
        Gpt2Tokenizer::from_bytes(&self.tokenizer_json)
    }

    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// Tokens in the tokenizer (the model's vocab_size).
    pub fn vocab_size(&self) -> usize {
        STRUCTURAL_TOKENS.len() + self.words.len()
    }
}

/// SplitMix64: a small deterministic PRNG, public so the trainer can draw its own streams.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// An independent stream for `label` (FNV-1a of the label mixed with the seed), so streams
    /// do not depend on the order in which they are used.
    pub fn stream(seed: u64, label: &str) -> Self {
        let h = label.bytes().fold(
            0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3),
        );
        let mut rng = Rng(h);
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (unbiased; `n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Fisher–Yates, from the end.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// `ceil(0.3·n)`: the test size of a split of `n` pairs (sklearn's rule).
pub fn test_count(n: usize) -> usize {
    (n * TEST_PERCENT).div_ceil(100)
}

/// The split rule (module doc): a Fisher–Yates permutation of `0..pairs.len()` from the stream
/// `split/<kind>` of `seed`; test = its first `ceil(0.3·n)` entries. Extractive: train = the
/// other entries (disjoint from test). Abstractive: train = all pairs in file order (the map
/// must be learned), test = the evaluation queries. Both lists are in permutation order except
/// the abstractive train list.
pub fn split(seed: u64, kind: TaskKind, pairs: &[Pair]) -> (Vec<Pair>, Vec<Pair>) {
    let mut perm: Vec<usize> = (0..pairs.len()).collect();
    Rng::stream(seed, &format!("split/{kind}")).shuffle(&mut perm);
    let n_test = test_count(pairs.len());
    let test = perm[..n_test].iter().map(|&i| pairs[i].clone()).collect();
    let train = match kind {
        TaskKind::Abstractive => pairs.to_vec(),
        TaskKind::Extractive => perm[n_test..].iter().map(|&i| pairs[i].clone()).collect(),
    };
    (train, test)
}

fn make_words(seed: u64) -> Vec<String> {
    let mut rng = Rng::stream(seed, "words");
    let mut seen = HashSet::new();
    let mut words = Vec::with_capacity(NUM_WORDS);
    while words.len() < NUM_WORDS {
        let syllables = 2 + rng.below(2);
        let mut w = String::with_capacity(2 * syllables);
        for _ in 0..syllables {
            w.push(CONSONANTS[rng.below(CONSONANTS.len())] as char);
            w.push(VOWELS[rng.below(VOWELS.len())] as char);
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

/// The tokens in id order: [`STRUCTURAL_TOKENS`], then `" " + word` for every word.
pub fn token_list(words: &[String]) -> Vec<String> {
    STRUCTURAL_TOKENS
        .iter()
        .map(|s| s.to_string())
        .chain(words.iter().map(|w| format!(" {w}")))
        .collect()
}

/// A WordLevel vocab serialized as a JSON object in id order.
struct OrderedVocab<'a>(&'a [String]);

impl Serialize for OrderedVocab<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (id, tok) in self.0.iter().enumerate() {
            map.serialize_entry(tok, &id)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct AddedTokenJson<'a> {
    id: usize,
    content: &'a str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize)]
struct WordLevelJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    vocab: OrderedVocab<'a>,
    unk_token: &'static str,
}

#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<AddedTokenJson<'a>>,
    normalizer: Option<()>,
    pre_tokenizer: serde_json::Value,
    post_processor: Option<()>,
    decoder: serde_json::Value,
    model: WordLevelJson<'a>,
}

/// tokenizer.json for the words (HF `tokenizers` format; see the module doc).
pub fn tokenizer_json(words: &[String]) -> Vec<u8> {
    let tokens = token_list(words);
    let file = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens: [END_OF_TEXT, UNKNOWN]
            .iter()
            .enumerate()
            .map(|(id, content)| AddedTokenJson {
                id,
                content,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special: true,
            })
            .collect(),
        normalizer: None,
        pre_tokenizer: serde_json::json!({
            "type": "Split",
            "pattern": {"Regex": GPT2_SPLIT_PATTERN},
            "behavior": "Isolated",
            "invert": false,
        }),
        post_processor: None,
        decoder: serde_json::json!({"type": "Fuse"}),
        model: WordLevelJson {
            kind: "WordLevel",
            vocab: OrderedVocab(&tokens),
            unk_token: UNKNOWN,
        },
    };
    let mut bytes = serde_json::to_vec_pretty(&file).expect("tokenizer.json serializes");
    bytes.push(b'\n');
    bytes
}

/// A task before its split.
struct Spec {
    name: &'static str,
    description: String,
    pairs: Vec<Pair>,
}

/// The suite for a seed (same seed, same suite, same files).
pub fn generate(seed: u64) -> TaskSuite {
    let words = make_words(seed);
    let w = |i: usize| words[i].clone();
    let mut order: Vec<usize> = (0..NUM_WORDS).collect();
    Rng::stream(seed, "groups").shuffle(&mut order);
    let (domain, rest) = order.split_at(DOMAIN_SIZE);
    let (targets, mut values) = rest.split_at(DOMAIN_SIZE);

    // antonym: consecutive words of a shuffled domain are each other's antonym.
    let mut shuffled = domain.to_vec();
    Rng::stream(seed, "antonym").shuffle(&mut shuffled);
    let mut partner = vec![usize::MAX; NUM_WORDS];
    for p in shuffled.chunks(2) {
        partner[p[0]] = p[1];
        partner[p[1]] = p[0];
    }
    // translation: a bijection domain → targets.
    let mut translated = targets.to_vec();
    Rng::stream(seed, "translation").shuffle(&mut translated);

    let mut specs = vec![
        Spec {
            name: "antonym",
            description: "x → its antonym: a fixed random pairing of the domain words (x ↔ y)"
                .into(),
            pairs: domain
                .iter()
                .map(|&x| Pair::new(w(x), w(partner[x])))
                .collect(),
        },
        Spec {
            name: "translation",
            description: format!(
                "x → its translation: a fixed random bijection onto {DOMAIN_SIZE} other words"
            ),
            pairs: domain
                .iter()
                .zip(&translated)
                .map(|(&x, &y)| Pair::new(w(x), w(y)))
                .collect(),
        },
    ];
    // attributes: a shuffled domain dealt round-robin onto the attribute's value words, so the
    // classes differ in size by at most one.
    for (name, n_values) in ATTRIBUTES {
        let (own, others) = values.split_at(n_values);
        values = others;
        let mut dealt = domain.to_vec();
        Rng::stream(seed, name).shuffle(&mut dealt);
        let mut value = vec![usize::MAX; NUM_WORDS];
        for (j, &x) in dealt.iter().enumerate() {
            value[x] = own[j % n_values];
        }
        specs.push(Spec {
            name,
            description: format!("x → its {name}: one of {n_values} words, a fixed random map"),
            pairs: domain
                .iter()
                .map(|&x| Pair::new(w(x), w(value[x])))
                .collect(),
        });
    }
    debug_assert!(values.is_empty(), "every word has a role");

    let tasks = specs
        .into_iter()
        .map(|spec| {
            let kind = TaskKind::Abstractive;
            let (train, test) = split(seed, kind, &spec.pairs);
            Task {
                name: spec.name.into(),
                kind,
                description: spec.description,
                pairs: spec.pairs,
                train,
                test,
            }
        })
        .collect();
    let tokenizer_json = tokenizer_json(&words);
    TaskSuite {
        seed,
        words,
        tasks,
        tokenizer_json,
    }
}

/// The prompt text and target, exactly as function_vectors builds them (PAPER.md §2.0):
/// `"<|endoftext|>" + Σ ("Q: x\nA: y\n\n") + "Q: xq\nA:"` and `" yq"`.
pub fn prompt(demos: &[&Pair], query: &Pair) -> (String, String) {
    let mut text = String::from(END_OF_TEXT);
    for d in demos {
        text.push_str("Q: ");
        text.push_str(&d.input);
        text.push_str("\nA: ");
        text.push_str(&d.output);
        text.push_str("\n\n");
    }
    text.push_str("Q: ");
    text.push_str(&query.input);
    text.push_str("\nA:");
    (text, format!(" {}", query.output))
}

/// One teacher-forced ICL sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    /// The prompt's ids followed by the query's answer token.
    pub ids: Vec<u32>,
    /// The index in `ids` of every answer token: each demonstration's `y`, then the query's (the
    /// last element, `ids.len() - 1`). The prediction of the token at `p` is made at `p - 1`.
    pub answer_positions: Vec<usize>,
}

impl Episode {
    /// The answer tokens, in the order of `answer_positions`.
    pub fn answer_ids(&self) -> Vec<u32> {
        self.answer_positions.iter().map(|&p| self.ids[p]).collect()
    }

    /// Where the query's answer is predicted: the last prompt position.
    pub fn query_logit_position(&self) -> usize {
        self.ids.len() - 2
    }
}

/// Encodes `prompt(demos, query)` + target and finds every answer token: each answer follows
/// the tokens of `"\nA:"`. Fails when an answer is not exactly one token (as in the const-len
/// datasets) or the prompt's structure is not found (e.g. an input containing `"\nA:"`). Works
/// with this suite's tokenizer and with GPT-2's.
pub fn encode_episode(tok: &Gpt2Tokenizer, demos: &[&Pair], query: &Pair) -> Result<Episode> {
    let answers = demos
        .iter()
        .copied()
        .chain([query])
        .map(|pair| {
            let answer = tok.encode(&format!(" {}", pair.output))?;
            match answer[..] {
                [id] => Ok(id),
                _ => Err(Error::Input(format!(
                    "answer {:?} of input {:?} is {} tokens; episodes need one-token answers",
                    pair.output,
                    pair.input,
                    answer.len()
                ))),
            }
        })
        .collect::<Result<Vec<u32>>>()?;
    let (text, target) = prompt(demos, query);
    let ids = tok.encode(&(text + &target))?;
    let marker = tok.encode("\nA:")?;
    let m = marker.len();
    let answer_positions: Vec<usize> = (m..ids.len())
        .filter(|&p| ids[p - m..p] == marker[..])
        .collect();
    if answer_positions.len() != answers.len() || answer_positions.last() != Some(&(ids.len() - 1))
    {
        return Err(Error::Input(format!(
            "episode with {} demonstrations: the prompt's \"\\nA:\" markers are not where the \
             template puts them (does an input contain \"\\nA:\"?)",
            demos.len()
        )));
    }
    for ((&p, &id), pair) in answer_positions
        .iter()
        .zip(&answers)
        .zip(demos.iter().copied().chain([query]))
    {
        if ids[p] != id {
            return Err(Error::Input(format!(
                "answer {:?} of input {:?} tokenizes differently in context",
                pair.output, pair.input
            )));
        }
    }
    Ok(Episode {
        ids,
        answer_positions,
    })
}

/// `n` distinct demonstrations from `pool`, none with the query's input (so the answer cannot be
/// copied from the context), in random order. Fewer when the pool has fewer such pairs.
pub fn draw_demos<'a>(pool: &'a [Pair], n: usize, query: &Pair, rng: &mut Rng) -> Vec<&'a Pair> {
    let mut candidates: Vec<&Pair> = pool.iter().filter(|p| p.input != query.input).collect();
    let n = n.min(candidates.len());
    // Partial Fisher–Yates: the first n entries end up a uniform random sample.
    for i in 0..n {
        let j = i + rng.below(candidates.len() - i);
        candidates.swap(i, j);
    }
    candidates.truncate(n);
    candidates
}

/// A training episode: a query drawn uniformly from `task.train` and `n_demos` demonstrations
/// from `task.train` (see [`draw_demos`]). Use a stream of your own, e.g.
/// `Rng::stream(seed, "train")`, never the evaluation stream.
pub fn train_episode<'a>(
    task: &'a Task,
    n_demos: usize,
    rng: &mut Rng,
) -> (Vec<&'a Pair>, &'a Pair) {
    let query = &task.train[rng.below(task.train.len())];
    (draw_demos(&task.train, n_demos, query, rng), query)
}

/// The held-out evaluation prompts of a task: one per test pair (the query), with `n_demos`
/// demonstrations from `task.train` drawn from the stream `eval/<task>/<n_demos>` of `seed`
/// (use the suite's seed). For extractive tasks the queries are unseen lists; for abstractive
/// ones the prompts are what is held out (module doc).
pub fn eval_prompts(task: &Task, n_demos: usize, seed: u64) -> Vec<(Vec<&Pair>, &Pair)> {
    let mut rng = Rng::stream(seed, &format!("eval/{}/{n_demos}", task.name));
    task.test
        .iter()
        .map(|q| (draw_demos(&task.train, n_demos, q, &mut rng), q))
        .collect()
}

#[derive(Serialize, Deserialize)]
struct SpecialTokens {
    end_of_text: u32,
    unknown: u32,
}

#[derive(Serialize, Deserialize)]
struct TemplateJson {
    prompt: String,
    target: String,
    tokens: String,
}

#[derive(Serialize, Deserialize)]
struct SplitJson {
    test_size: f64,
    n_test: String,
    permutation: String,
    extractive: String,
    abstractive: String,
}

#[derive(Serialize, Deserialize)]
struct TaskJson {
    name: String,
    kind: TaskKind,
    file: String,
    description: String,
    pairs: usize,
    train: usize,
    test: usize,
}

#[derive(Serialize, Deserialize)]
struct SuiteJson {
    format: String,
    seed: u64,
    vocab_size: usize,
    special_tokens: SpecialTokens,
    template: TemplateJson,
    split: SplitJson,
    tasks: Vec<TaskJson>,
    words: Vec<String>,
}

fn suite_json(suite: &TaskSuite) -> SuiteJson {
    SuiteJson {
        format: FORMAT.into(),
        seed: suite.seed,
        vocab_size: suite.vocab_size(),
        special_tokens: SpecialTokens {
            end_of_text: 0,
            unknown: 1,
        },
        template: TemplateJson {
            prompt: "<|endoftext|>Q: {x_1}\nA: {y_1}\n\n…Q: {x_n}\nA: {y_n}\n\nQ: {x_q}\nA:".into(),
            target: " y_q".into(),
            tokens: "<|endoftext|>, then per demonstration `Q` `:` ` x` `\\n` `A` `:` ` y` `\\n` `\\n` (9 tokens for a one-token input; a list input ` w1` `,` ` w2` `,` ` w3` is 5 tokens), then `Q` `:` ` x_q` `\\n` `A` `:`, and the target ` y_q` (one token)".into(),
        },
        split: SplitJson {
            test_size: TEST_PERCENT as f64 / 100.0,
            n_test: "ceil(0.3·n)".into(),
            permutation: "Fisher–Yates (from the end) over 0..n with SplitMix64 stream \"split/<kind>\" of the seed; test = perm[..n_test], rest = perm[n_test..], in permutation order".into(),
            extractive: "train = rest, test = perm[..n_test]: test inputs never occur in training (this suite has no extractive task; suites written by other tools may)".into(),
            abstractive: "train = all pairs (the map must be learned in the weights), test = perm[..n_test] used as evaluation queries; what is held out is the prompt: demonstrations and queries drawn from the evaluation stream \"eval/<task>/<n_demos>\", which training never uses".into(),
        },
        tasks: suite
            .tasks
            .iter()
            .map(|t| TaskJson {
                name: t.name.clone(),
                kind: t.kind,
                file: t.file(),
                description: t.description.clone(),
                pairs: t.pairs.len(),
                train: t.train.len(),
                test: t.test.len(),
            })
            .collect(),
        words: suite.words.clone(),
    }
}

fn pretty<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON serializes");
    bytes.push(b'\n');
    bytes
}

/// Writes the suite's files into `out`, which must be new or empty; nothing appears there unless
/// every file was written.
pub fn write(suite: &TaskSuite, out: &Path) -> Result<()> {
    if out.is_dir() {
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::Output(format!(
                "{} is not empty; write the task suite to a new or empty directory",
                out.display()
            )));
        }
    }
    let staged = StagedDir::create(out)?;
    // One folder per kind the suite has.
    for kind in [TaskKind::Abstractive, TaskKind::Extractive] {
        if suite.tasks.iter().any(|t| t.kind == kind) {
            let dir = staged.path(kind.as_str());
            std::fs::create_dir(&dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    for task in &suite.tasks {
        staged.write(&task.file(), &pretty(&task.pairs))?;
    }
    staged.write("tokenizer.json", &suite.tokenizer_json)?;
    staged.write("suite.json", &pretty(&suite_json(suite)))?;
    staged.commit()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Input(format!("{}: not a valid file: {e}", path.display())))
}

/// Reads a suite written by [`write`] (or any directory in its layout), checks it, and
/// re-derives every split from suite.json's seed.
pub fn load(dir: &Path) -> Result<TaskSuite> {
    if !dir.is_dir() {
        return Err(Error::Input(format!(
            "{} is not a directory (expected a task suite written by `revattn tasks`)",
            dir.display()
        )));
    }
    let suite_path = dir.join("suite.json");
    let meta: SuiteJson = read_json(&suite_path)?;
    let bad = |what: String| Error::Input(format!("{}: {what}", suite_path.display()));
    if meta.format != FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {FORMAT:?}",
            meta.format
        )));
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer_json = std::fs::read(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
    let tok = Gpt2Tokenizer::from_bytes(&tokenizer_json).map_err(|e| {
        Error::Input(format!(
            "{}: {}",
            tok_path.display(),
            e.to_string().replace('\n', " ")
        ))
    })?;
    if tok.vocab_size() != meta.vocab_size {
        return Err(bad(format!(
            "vocab_size {} but tokenizer.json has {} tokens",
            meta.vocab_size,
            tok.vocab_size()
        )));
    }
    let mut tasks = Vec::with_capacity(meta.tasks.len());
    for entry in &meta.tasks {
        let file = format!("{}/{}.json", entry.kind, entry.name);
        let path = dir.join(&file);
        let pairs: Vec<Pair> = read_json(&path)?;
        let fail = |what: String| Error::Input(format!("{}: {what}", path.display()));
        if pairs.len() != entry.pairs {
            return Err(fail(format!(
                "{} pairs, suite.json says {}",
                pairs.len(),
                entry.pairs
            )));
        }
        for (i, p) in pairs.iter().enumerate() {
            let input = tok.encode(&format!(" {}", p.input))?;
            let output = tok.encode(&format!(" {}", p.output))?;
            let unknown = |ids: &[u32]| ids.iter().any(|&id| tok.token_text(id) == UNKNOWN);
            if input.is_empty() || unknown(&input) {
                return Err(fail(format!(
                    "pair {i}: input {:?} has words the tokenizer does not know",
                    p.input
                )));
            }
            if output.len() != 1 || unknown(&output) {
                return Err(fail(format!(
                    "pair {i}: output {:?} is not one known token",
                    p.output
                )));
            }
        }
        let (train, test) = split(meta.seed, entry.kind, &pairs);
        tasks.push(Task {
            name: entry.name.clone(),
            kind: entry.kind,
            description: entry.description.clone(),
            pairs,
            train,
            test,
        });
    }
    Ok(TaskSuite {
        seed: meta.seed,
        words: meta.words,
        tasks,
        tokenizer_json,
    })
}

/// One line per task and a closing line, for the CLI.
pub fn describe(suite: &TaskSuite, out: &Path) -> String {
    let mut s = String::new();
    for t in &suite.tasks {
        let ex = &t.pairs[0];
        let train = match t.kind {
            TaskKind::Abstractive => format!("train {} (all)", t.train.len()),
            TaskKind::Extractive => format!("train {}", t.train.len()),
        };
        s += &format!(
            "{:<28} {:>5} pairs  {:<15} test {:>4}  e.g. {:?} -> {:?}\n",
            t.file(),
            t.pairs.len(),
            train,
            t.test.len(),
            ex.input,
            ex.output
        );
    }
    s += &format!(
        "wrote {} (seed {}, {} words, tokenizer.json {} tokens: <|endoftext|> = 0, <|unk|> = 1)\n",
        out.display(),
        suite.seed,
        suite.words.len(),
        suite.vocab_size()
    );
    s
}

/// `revattn tasks`: generates, writes, and returns the summary.
pub fn run(out: &Path, seed: u64) -> Result<String> {
    let suite = generate(seed);
    write(&suite, out)?;
    Ok(describe(&suite, out))
}

/// The suite the embedded default model was trained on: `generate(0)`, committed as
/// `assets/tasks/` (a test checks they are identical).
pub const DEFAULT_SEED: u64 = 0;

/// A held-out few-shot prompt of `task` (its `query`-th test query with `shots` evaluation
/// demonstrations, as `eval_prompts` draws them) and its target, for `revattn maps --task`.
/// `dir`: a suite written by `revattn tasks`; default: the embedded model's suite.
pub fn few_shot_prompt(
    dir: Option<&Path>,
    task: &str,
    shots: usize,
    query: usize,
) -> Result<(String, String)> {
    let suite = match dir {
        Some(d) => load(d)?,
        None => generate(DEFAULT_SEED),
    };
    let t = suite.task(task).ok_or_else(|| {
        let names: Vec<&str> = suite.tasks.iter().map(|t| t.name.as_str()).collect();
        Error::Input(format!(
            "no task {task:?}; the suite has {}",
            names.join(", ")
        ))
    })?;
    let prompts = eval_prompts(t, shots, suite.seed);
    let n = prompts.len();
    let (demos, q) = prompts.into_iter().nth(query).ok_or_else(|| {
        Error::Input(format!("--query {query}: task {task} has {n} test queries"))
    })?;
    Ok(prompt(&demos, q))
}
