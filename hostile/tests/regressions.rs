//! Every committed seed and every input a fuzzer ever crashed on, replayed through its
//! target's checks in the ordinary test suite (`hostile/fuzz/corpus/<target>/` and
//! `hostile/fuzz/regressions/<target>/`), so a fixed crash stays fixed without a fuzzer.

use std::path::{Path, PathBuf};

use boomerang_hostile::TARGETS;
use boomerang_schemas::codec;
use boomerang_schemas::wire;
use boomerang_schemas::{EnrichedPostPurchaseEvent, Money, SchemaKind};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(folder: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read an input");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_seed_and_every_crash_input_passes_its_targets_checks() {
    for (target, check) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(!seeds.is_empty(), "{target} has no committed seeds");
        let crashes = inputs(&fuzz_dir().join("regressions").join(target));
        for (path, bytes) in seeds.iter().chain(&crashes) {
            let outcome = std::panic::catch_unwind(|| check(bytes));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
        }
    }
}

/// Writes the seed corpora from the sample records (run with `--ignored` after the schemas
/// change, then commit what it wrote).
#[test]
#[ignore]
fn write_seed_corpora() {
    let event = boomerang_testkit::samples::event();
    let mut rich = event.clone();
    rich.amount = Some(Money {
        amount_minor: 12_345,
        currency: "EUR".into(),
    });
    rich.reason_text = Some("zu klein".into());
    rich.attributes.insert("size".into(), "M".into());
    rich.attributes.insert("colour".into(), "blue".into());
    let customer = boomerang_testkit::samples::customer("cu-1", "vip", true);
    let order = boomerang_testkit::samples::order("o-1", "cu-1", Some(1_700_000_000_000_000));
    let enriched = EnrichedPostPurchaseEvent {
        customer_pseudonymised: true,
        customer_segment: Some("vip".into()),
        line_category: Some("shoes".into()),
        line_unit_price: Some(Money {
            amount_minor: 5_000,
            currency: "EUR".into(),
        }),
        days_since_delivery: Some(3),
        within_return_window: Some(true),
        enriched_at: event.occurred_at,
        ..boomerang_testkit::samples::enriched(rich.clone())
    };

    let event_datums = [
        codec::encode(&event).expect("encode"),
        codec::encode(&rich).expect("encode"),
    ];
    let version_1 =
        apache_avro::Schema::parse_str(SchemaKind::PostPurchaseEvent.history()[0]).expect("v1");
    let enriched_datum = codec::encode(&enriched).expect("encode");
    let customer_datum = codec::encode(&customer).expect("encode");
    let order_datum = codec::encode(&order).expect("encode");
    let prefixed = |selector: u8, datum: &[u8]| [&[selector][..], datum].concat();
    let mut framed = Vec::new();
    wire::start_frame(7, &mut framed);
    framed.extend_from_slice(&event_datums[0]);
    let seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("frame", vec![framed, Vec::new(), vec![1], vec![0, 0, 0]]),
        ("event_codec", event_datums.to_vec()),
        ("enriched_codec", vec![enriched_datum.clone()]),
        (
            "event_previous_schema",
            vec![codec::encode_for_writer_schema(&event, &version_1).expect("v1 datum")],
        ),
        (
            "reference_records",
            vec![prefixed(0, &customer_datum), prefixed(1, &order_datum)],
        ),
        ("validate_event", event_datums.to_vec()),
        (
            "sink_rows",
            vec![
                prefixed(0, &enriched_datum),
                prefixed(1, &order_datum),
                prefixed(2, &customer_datum),
            ],
        ),
    ];
    for (target, datums) in seeds {
        let folder = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&folder).expect("corpus folder");
        for (n, datum) in datums.iter().enumerate() {
            std::fs::write(folder.join(format!("seed-{n}")), datum).expect("write a seed");
        }
    }
}
