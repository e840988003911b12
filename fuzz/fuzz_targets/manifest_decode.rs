//! Manifest decoding (`moat_k8s_model::parse_documents`): arbitrary UTF-8 text as one
//! manifest file, the way standalone mode and `moatctl policy` read a directory.
//!
//! Must never panic, whatever the YAML (aliases, tags, deep nesting, wrong types, bad
//! labels, CIDRs and ports). Also checks that errors name the file and a document, and that
//! what is accepted can go on to the policy compiler without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moat_k8s_model::{parse_documents, Manifests};
use moat_policy_compiler::{matrix, Compiler, Mode, World};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    let (objects, errors) = parse_documents(file, text);
    for e in &errors {
        assert_eq!(e.file, file);
        let _ = e.to_string();
    }
    for o in &objects {
        let _ = o.kind();
    }
    // Whatever decoded is valid input for the compiler (as for `moatctl policy matrix`).
    if objects.is_empty() {
        return;
    }
    let m = Manifests {
        objects: objects.into_iter().map(|o| (file.to_path_buf(), o)).collect(),
        errors,
    };
    let _ = m.kinds();
    let world = World::from_manifests(&m, Mode::Default);
    if world.pods.len() > 16 {
        return;
    }
    let compiled = Compiler::new().compile(&world);
    let mx = matrix(&world, &compiled, &[(6, 80), (17, 53)]);
    let _ = mx.to_string();
    let _ = mx.to_json();
});
