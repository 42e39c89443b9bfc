//! Splits a JS worker's component into the part every JS worker shares and
//! the part that is its own, so a deploy compiles only its own part.
//!
//! A JS worker is the StarlingMonkey engine (one core module of about 9 MiB
//! of code) plus the heap that Wizer snapshotted after running the worker's
//! top-level code: that module's data segments. Everything else in the
//! component is the same for every JS worker built by one toolchain. So
//! [`split`] turns the component into:
//!
//! - a **template**: the component with the engine module's memory turned
//!   into an import and its data segments removed, and one more import, a
//!   core module named [`SNAPSHOT_IMPORT`] that exports that memory, which
//!   the template instantiates just before the engine and hands to it. The
//!   template is the same bytes for every JS worker on one engine, so the
//!   node compiles it once (seconds) and every JS worker shares the loaded
//!   code;
//! - a **snapshot** module: the memory (its original type) and the data
//!   segments, nothing else. It has no functions, so compiling it is
//!   building its memory image (milliseconds).
//!
//! The runtime supplies each worker's snapshot module under
//! [`SNAPSHOT_IMPORT`] when it links the template. The instance behaves as
//! the original did: the memory is created and initialised from the same
//! segments before the engine is instantiated (the engine has no start
//! function), and the engine exports the same memory under the same name.
//!
//! Anything unexpected (no such module, several, an import of a module, core
//! types, a segment at a computed offset, …) is not split: the component is
//! then compiled whole, as any other.

use anyhow::{Context, bail};
use wasm_encoder::{
    Alias, ComponentAliasSection, ComponentExportKind, ComponentImportSection,
    ComponentOuterAliasKind, ComponentTypeRef, CoreTypeSection, EntityType, ExportKind,
    InstanceSection, ModuleArg, ModuleType, RawSection,
};
use wasmparser::{
    BinaryReader, ComponentAlias, ComponentAliasSectionReader, ComponentExternalKind,
    ComponentOuterAliasKind as OuterKind, ExternalKind, Instance, InstanceSectionReader,
};

/// The name of the template's import that takes a worker's snapshot module,
/// and of the engine module's import of its memory from it.
pub const SNAPSHOT_IMPORT: &str = "warren-snapshot";

/// The name under which the snapshot module exports the memory.
const MEMORY: &str = "memory";

/// A component split by [`split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The component every JS worker on one engine shares.
    pub template: Vec<u8>,
    /// This worker's memory and its data segments, as a core module.
    pub snapshot: Vec<u8>,
}

// Section ids of components and core modules.
const CORE_MODULE: u8 = 1;
const CORE_INSTANCE: u8 = 2;
const CORE_TYPE: u8 = 3;
const COMPONENT: u8 = 4;
const COMPONENT_INSTANCE: u8 = 5;
const ALIAS: u8 = 6;
const IMPORT: u8 = 10;
const EXPORT: u8 = 11;
const CUSTOM: u8 = 0;
const MOD_IMPORT: u8 = 2;
const MOD_MEMORY: u8 = 5;
const MOD_START: u8 = 8;
const MOD_DATA: u8 = 11;
const MOD_DATA_COUNT: u8 = 12;

/// One section: its id, where its body starts and ends in the binary.
#[derive(Debug, Clone, Copy)]
struct Section {
    id: u8,
    body: usize,
    end: usize,
}

/// The top-level sections of the module or component `bin` (after its 8-byte
/// header); an error if the binary is cut short.
fn sections(bin: &[u8]) -> anyhow::Result<Vec<Section>> {
    if bin.len() < 8 || &bin[..4] != b"\0asm" {
        bail!("not a wasm binary");
    }
    let mut out = Vec::new();
    let mut reader = BinaryReader::new(bin, 0);
    reader.read_bytes(8)?;
    while !reader.eof() {
        let id = reader.read_u8()?;
        let size = reader.read_var_u32()? as usize;
        let body = reader.original_position();
        let end = body.checked_add(size).filter(|&e| e <= bin.len());
        let Some(end) = end else {
            bail!("section {id} runs past the end");
        };
        reader.read_bytes(size)?;
        out.push(Section { id, body, end });
    }
    Ok(out)
}

/// The engine module, split in two.
struct EngineParts {
    /// The module with its memory imported from [`SNAPSHOT_IMPORT`] and no
    /// data.
    code: Vec<u8>,
    /// The memory, exported, and the data segments.
    snapshot: Vec<u8>,
    /// The memory's type as the code imports it (no minimum).
    memory: wasm_encoder::MemoryType,
}

/// Splits core module `module` if it is the shape a Wizer snapshot has: one
/// memory it defines (none imported), active data segments at constant
/// offsets into it, no start function. `None` otherwise.
fn split_module(module: &[u8]) -> anyhow::Result<Option<EngineParts>> {
    let secs = sections(module)?;
    let one = |id| {
        let found: Vec<&Section> = secs.iter().filter(|s| s.id == id).collect();
        match found.as_slice() {
            [] => Ok(None),
            [s] => Ok(Some(**s)),
            _ => bail!("section {id} appears twice"),
        }
    };
    let (Some(memory), Some(data)) = (one(MOD_MEMORY)?, one(MOD_DATA)?) else {
        return Ok(None);
    };
    if one(MOD_START)?.is_some() {
        return Ok(None);
    }
    let imports = one(MOD_IMPORT)?;
    if let Some(s) = imports {
        let reader = wasmparser::ImportSectionReader::new(BinaryReader::new(
            &module[s.body..s.end],
            s.body,
        ))?;
        for import in reader.into_imports() {
            if matches!(import?.ty, wasmparser::TypeRef::Memory(_)) {
                return Ok(None);
            }
        }
    }
    let memories = wasmparser::MemorySectionReader::new(BinaryReader::new(
        &module[memory.body..memory.end],
        memory.body,
    ))?;
    let types = memories.into_iter().collect::<Result<Vec<_>, _>>()?;
    let [ty] = types.as_slice() else {
        return Ok(None);
    };
    let segments = wasmparser::DataSectionReader::new(BinaryReader::new(
        &module[data.body..data.end],
        data.body,
    ))?;
    for segment in segments {
        let wasmparser::DataKind::Active {
            memory_index: 0,
            offset_expr,
        } = segment?.kind
        else {
            return Ok(None);
        };
        let mut ops = offset_expr.get_operators_reader();
        let constant = matches!(
            ops.read()?,
            wasmparser::Operator::I32Const { .. } | wasmparser::Operator::I64Const { .. }
        );
        if !constant || !matches!(ops.read()?, wasmparser::Operator::End) || !ops.eof() {
            return Ok(None);
        }
    }
    let memory_type = wasm_encoder::MemoryType {
        minimum: 0,
        maximum: ty.maximum,
        memory64: ty.memory64,
        shared: ty.shared,
        page_size_log2: ty.page_size_log2,
    };

    // The code: every section as it is, but the memory (now the import's),
    // the data and its count (bulk-memory instructions that need the count
    // make the template fail to compile, and the worker is compiled whole).
    let mut code = wasm_encoder::Module::new();
    let mut import_section_written = false;
    // Our import: the memory, from the snapshot module.
    let mut ours = Vec::new();
    for name in [SNAPSHOT_IMPORT, MEMORY] {
        leb(&mut ours, name.len() as u32);
        ours.extend_from_slice(name.as_bytes());
    }
    ours.push(0x02); // a memory
    wasm_encoder::Encode::encode(&memory_type, &mut ours);
    let write_imports =
        |code: &mut wasm_encoder::Module, existing: Option<&[u8]>| -> anyhow::Result<()> {
            let (count, rest) = match existing {
                Some(bytes) => {
                    let mut r = BinaryReader::new(bytes, 0);
                    let count = r.read_var_u32()?;
                    (count, &bytes[r.original_position()..])
                }
                None => (0, &[][..]),
            };
            let mut body = Vec::with_capacity(rest.len() + ours.len() + 5);
            leb(&mut body, count.checked_add(1).context("too many imports")?);
            body.extend_from_slice(rest);
            body.extend_from_slice(&ours);
            code.section(&RawSection {
                id: MOD_IMPORT,
                data: &body,
            });
            Ok(())
        };
    for s in &secs {
        // Imports come right after types (id 1); write ours there if the
        // module has none.
        if !import_section_written && s.id != 0 && s.id != 1 {
            write_imports(&mut code, imports.map(|i| &module[i.body..i.end]))?;
            import_section_written = true;
            if s.id == MOD_IMPORT {
                continue;
            }
        }
        match s.id {
            MOD_MEMORY | MOD_DATA | MOD_DATA_COUNT => {}
            id => {
                code.section(&RawSection {
                    id,
                    data: &module[s.body..s.end],
                });
            }
        }
    }
    if !import_section_written {
        write_imports(&mut code, imports.map(|i| &module[i.body..i.end]))?;
    }

    let mut snapshot = wasm_encoder::Module::new();
    snapshot.section(&RawSection {
        id: MOD_MEMORY,
        data: &module[memory.body..memory.end],
    });
    let mut exports = wasm_encoder::ExportSection::new();
    exports.export(MEMORY, ExportKind::Memory, 0);
    snapshot.section(&exports);
    snapshot.section(&RawSection {
        id: MOD_DATA,
        data: &module[data.body..data.end],
    });
    Ok(Some(EngineParts {
        code: code.finish(),
        snapshot: snapshot.finish(),
        memory: memory_type,
    }))
}

/// Appends `n` as unsigned LEB128.
fn leb(out: &mut Vec<u8>, mut n: u32) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Splits the JS worker component `component` (see the module docs).
/// `Ok(None)` when it does not have the expected shape; an error when it
/// does not parse.
pub fn split(component: &[u8]) -> anyhow::Result<Option<Split>> {
    let secs = sections(component)?;
    // Which core module is the engine: the one module with a memory and
    // data segments to move.
    let mut engine = None;
    let mut modules = 0u32;
    for (at, s) in secs.iter().enumerate() {
        match s.id {
            CORE_MODULE => {
                if let Some(parts) = split_module(&component[s.body..s.end])? {
                    if engine.is_some() {
                        return Ok(None);
                    }
                    engine = Some((at, modules, parts));
                }
                modules += 1;
            }
            // Core types would be renumbered by ours; not needed so far.
            CORE_TYPE => return Ok(None),
            COMPONENT if !plain_nested(&component[s.body..s.end], 0)? => return Ok(None),
            // Module arguments or exports of a component instance, and
            // exports of a module, would need renumbering too (and an export
            // adds an index); ComponentizeJS makes none.
            COMPONENT_INSTANCE => {
                let reader = wasmparser::ComponentInstanceSectionReader::new(BinaryReader::new(
                    &component[s.body..s.end],
                    s.body,
                ))?;
                for instance in reader {
                    let module = match instance? {
                        wasmparser::ComponentInstance::Instantiate { args, .. } => {
                            args.iter().any(|a| a.kind == ComponentExternalKind::Module)
                        }
                        wasmparser::ComponentInstance::FromExports(exports) => exports
                            .iter()
                            .any(|e| e.kind == ComponentExternalKind::Module),
                    };
                    if module {
                        return Ok(None);
                    }
                }
            }
            EXPORT => {
                let reader = wasmparser::ComponentExportSectionReader::new(BinaryReader::new(
                    &component[s.body..s.end],
                    s.body,
                ))?;
                for export in reader {
                    if export?.kind == ComponentExternalKind::Module {
                        return Ok(None);
                    }
                }
            }
            IMPORT => {
                let reader = wasmparser::ComponentImportSectionReader::new(BinaryReader::new(
                    &component[s.body..s.end],
                    s.body,
                ))?;
                for import in reader {
                    if matches!(import?.ty, wasmparser::ComponentTypeRef::Module(_)) {
                        return Ok(None);
                    }
                }
            }
            ALIAS => {
                for alias in alias_reader(component, s)? {
                    // Aliases that add a core module or core type index.
                    if let ComponentAlias::InstanceExport {
                        kind: ComponentExternalKind::Module,
                        ..
                    }
                    | ComponentAlias::Outer {
                        kind: OuterKind::CoreModule | OuterKind::CoreType,
                        ..
                    } = alias?
                    {
                        return Ok(None);
                    }
                }
            }
            _ => {}
        }
    }
    let Some((engine_at, engine_module, parts)) = engine else {
        return Ok(None);
    };
    // The snapshot module takes the engine's place in the module index
    // space (index `engine_module`), the engine the next; later modules move
    // up one.
    // (An index out of bounds stays out of bounds, and the template then
    // fails to compile: the worker is loaded whole.)
    let module_index = |i: u32| {
        if i < engine_module {
            i
        } else {
            i.saturating_add(1)
        }
    };
    // The core instance that instantiates the engine: the snapshot's
    // instance goes just before it, and instances from there move up one.
    let mut engine_instance = None;
    let mut instances = 0u32;
    for s in secs.iter().filter(|s| s.id == CORE_INSTANCE) {
        for instance in instance_reader(component, s)? {
            if let Instance::Instantiate { module_index, .. } = instance?
                && module_index == engine_module
            {
                if engine_instance.is_some() {
                    return Ok(None);
                }
                engine_instance = Some(instances);
            }
            instances += 1;
        }
    }
    let Some(engine_instance) = engine_instance else {
        return Ok(None);
    };

    let instance_index = |i: u32| {
        if i < engine_instance {
            i
        } else {
            i.saturating_add(1)
        }
    };

    let mut out = wasm_encoder::Component::new();
    let mut instances = 0u32;
    for (at, s) in secs.iter().enumerate() {
        let body = &component[s.body..s.end];
        if at == engine_at {
            // The snapshot module's type (it exports the memory), the
            // import that takes it, then the engine's code.
            let mut ty = ModuleType::new();
            ty.export(MEMORY, EntityType::Memory(parts.memory));
            let mut types = CoreTypeSection::new();
            types.ty().module(&ty);
            out.section(&types);
            let mut import = ComponentImportSection::new();
            import.import(SNAPSHOT_IMPORT, ComponentTypeRef::Module(0));
            out.section(&import);
            out.section(&RawSection {
                id: CORE_MODULE,
                data: &parts.code,
            });
            continue;
        }
        match s.id {
            CORE_INSTANCE => {
                let mut section = InstanceSection::new();
                for instance in instance_reader(component, s)? {
                    match instance? {
                        Instance::Instantiate {
                            module_index: m,
                            args,
                        } => {
                            let mut args: Vec<(&str, ModuleArg)> = args
                                .iter()
                                .map(|a| (a.name, ModuleArg::Instance(instance_index(a.index))))
                                .collect();
                            if instances == engine_instance {
                                section.instantiate(engine_module, Vec::<(&str, ModuleArg)>::new());
                                args.push((SNAPSHOT_IMPORT, ModuleArg::Instance(engine_instance)));
                            }
                            section.instantiate(module_index(m), args);
                        }
                        Instance::FromExports(exports) => {
                            let mut items = Vec::with_capacity(exports.len());
                            for e in exports.iter() {
                                items.push((e.name, export_kind(e.kind)?, e.index));
                            }
                            section.export_items(items);
                        }
                    }
                    instances += 1;
                }
                out.section(&section);
            }
            ALIAS => {
                let mut section = ComponentAliasSection::new();
                for alias in alias_reader(component, s)? {
                    section.alias(match alias? {
                        ComponentAlias::CoreInstanceExport {
                            kind,
                            instance_index: i,
                            name,
                        } => Alias::CoreInstanceExport {
                            instance: instance_index(i),
                            kind: export_kind(kind)?,
                            name,
                        },
                        ComponentAlias::InstanceExport {
                            kind,
                            instance_index,
                            name,
                        } => Alias::InstanceExport {
                            instance: instance_index,
                            kind: component_export_kind(kind),
                            name,
                        },
                        ComponentAlias::Outer { kind, count, index } => Alias::Outer {
                            kind: outer_kind(kind),
                            count,
                            index,
                        },
                    });
                }
                out.section(&section);
            }
            // Debug names of the component's items by index, which the
            // split moved: left out rather than wrong.
            CUSTOM if custom_name(body) == Some("component-name") => {}
            id => {
                out.section(&RawSection { id, data: body });
            }
        }
    }
    Ok(Some(Split {
        template: out.finish(),
        snapshot: parts.snapshot,
    }))
}

/// Deepest nesting of components [`plain_nested`] looks into; deeper ones
/// are not split.
const MAX_NESTING: usize = 8;

/// Whether nested component `bin` (at `depth`) refers to no core module or
/// core type of an enclosing component (those indices move when split).
fn plain_nested(bin: &[u8], depth: usize) -> anyhow::Result<bool> {
    if depth >= MAX_NESTING {
        return Ok(false);
    }
    for s in sections(bin)? {
        match s.id {
            COMPONENT if !plain_nested(&bin[s.body..s.end], depth + 1)? => return Ok(false),
            ALIAS => {
                for alias in alias_reader(bin, &s)? {
                    if let ComponentAlias::Outer {
                        kind: OuterKind::CoreModule | OuterKind::CoreType,
                        ..
                    } = alias?
                    {
                        return Ok(false);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(true)
}

/// The name of custom section `body`, if it reads.
fn custom_name(body: &[u8]) -> Option<&str> {
    BinaryReader::new(body, 0).read_string().ok()
}

fn instance_reader<'a>(bin: &'a [u8], s: &Section) -> anyhow::Result<InstanceSectionReader<'a>> {
    Ok(InstanceSectionReader::new(BinaryReader::new(
        &bin[s.body..s.end],
        s.body,
    ))?)
}

fn alias_reader<'a>(bin: &'a [u8], s: &Section) -> anyhow::Result<ComponentAliasSectionReader<'a>> {
    Ok(ComponentAliasSectionReader::new(BinaryReader::new(
        &bin[s.body..s.end],
        s.body,
    ))?)
}

fn export_kind(kind: ExternalKind) -> anyhow::Result<ExportKind> {
    Ok(match kind {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
        ExternalKind::FuncExact => bail!("an exact function export"),
    })
}

fn component_export_kind(kind: ComponentExternalKind) -> ComponentExportKind {
    match kind {
        ComponentExternalKind::Module => ComponentExportKind::Module,
        ComponentExternalKind::Func => ComponentExportKind::Func,
        ComponentExternalKind::Value => ComponentExportKind::Value,
        ComponentExternalKind::Type => ComponentExportKind::Type,
        ComponentExternalKind::Instance => ComponentExportKind::Instance,
        ComponentExternalKind::Component => ComponentExportKind::Component,
    }
}

fn outer_kind(kind: OuterKind) -> ComponentOuterAliasKind {
    match kind {
        OuterKind::CoreModule => ComponentOuterAliasKind::CoreModule,
        OuterKind::CoreType => ComponentOuterAliasKind::CoreType,
        OuterKind::Type => ComponentOuterAliasKind::Type,
        OuterKind::Component => ComponentOuterAliasKind::Component,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, ConstExpr, DataSection, Function, FunctionSection, Instruction, MemorySection,
        MemoryType, Module, StartSection, TypeSection,
    };

    fn memory() -> MemoryType {
        MemoryType {
            minimum: 2,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        }
    }

    /// A module with one function, a memory and `data` segments (`offset`
    /// the expression of the first), and a start function when `start`.
    fn module(offset: ConstExpr, start: bool) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        m.section(&funcs);
        let mut mems = MemorySection::new();
        mems.memory(memory());
        m.section(&mems);
        let mut exports = wasm_encoder::ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0);
        m.section(&exports);
        if start {
            m.section(&StartSection { function_index: 0 });
        }
        let mut code = CodeSection::new();
        let mut f = Function::new([]);
        f.instruction(&Instruction::End);
        code.function(&f);
        m.section(&code);
        let mut data = DataSection::new();
        data.active(0, &offset, b"heap".iter().copied());
        data.active(0, &ConstExpr::i32_const(100), b"more".iter().copied());
        m.section(&data);
        m.finish()
    }

    fn valid(wasm: &[u8]) {
        let mut v = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        if let Err(e) = v.validate_all(wasm) {
            panic!("invalid: {e}");
        }
    }

    /// A component instantiating `module` and exporting nothing.
    fn component(module: &[u8]) -> Vec<u8> {
        let mut c = wasm_encoder::Component::new();
        c.section(&RawSection {
            id: CORE_MODULE,
            data: module,
        });
        let mut instances = InstanceSection::new();
        instances.instantiate(0, Vec::<(&str, ModuleArg)>::new());
        c.section(&instances);
        let mut aliases = ComponentAliasSection::new();
        aliases.alias(Alias::CoreInstanceExport {
            instance: 0,
            kind: ExportKind::Memory,
            name: "memory",
        });
        c.section(&aliases);
        c.finish()
    }

    #[test]
    fn a_snapshot_shaped_engine_splits_into_a_valid_template_and_snapshot() {
        let original = component(&module(ConstExpr::i32_const(16), false));
        valid(&original);
        let split = split(&original).expect("parses").expect("splits");
        valid(&split.template);
        valid(&split.snapshot);
        // The snapshot is the memory and the data; the code imports it.
        let mut saw = (false, false);
        for p in wasmparser::Parser::new(0).parse_all(&split.snapshot) {
            match p.expect("parses") {
                wasmparser::Payload::DataSection(d) => saw.0 = d.count() == 2,
                wasmparser::Payload::CodeSectionStart { .. } => panic!("code in the snapshot"),
                _ => {}
            }
        }
        for p in wasmparser::Parser::new(0).parse_all(&split.template) {
            match p.expect("parses") {
                wasmparser::Payload::DataSection(_) | wasmparser::Payload::MemorySection(_) => {
                    panic!("the template keeps a memory or data")
                }
                wasmparser::Payload::ComponentImportSection(s) => {
                    let names: Vec<_> = s
                        .into_iter()
                        .map(|i| i.expect("import").name.name)
                        .collect();
                    saw.1 = names == [SNAPSHOT_IMPORT];
                }
                _ => {}
            }
        }
        assert_eq!(saw, (true, true));
    }

    #[test]
    fn templates_of_engines_with_other_heaps_are_equal() {
        let a = split(&component(&module(ConstExpr::i32_const(16), false)))
            .expect("parses")
            .expect("splits");
        let b = split(&component(&module(ConstExpr::i32_const(4096), false)))
            .expect("parses")
            .expect("splits");
        assert!(a.template == b.template);
        assert!(a.snapshot != b.snapshot);
    }

    #[test]
    fn engines_not_shaped_like_a_snapshot_are_left_whole() {
        // A segment at a computed offset.
        let computed = ConstExpr::i32_const(8).with_i32_const(8).with_i32_add();
        assert_eq!(
            split(&component(&module(computed, false))).expect("parses"),
            None
        );
        // A start function, which could see the memory before it is filled.
        let started = component(&module(ConstExpr::i32_const(16), true));
        assert_eq!(split(&started).expect("parses"), None);
        // No data at all.
        let mut m = Module::new();
        let mut mems = MemorySection::new();
        mems.memory(memory());
        m.section(&mems);
        assert_eq!(split(&component(&m.finish())).expect("parses"), None);
    }

    #[test]
    fn components_that_export_or_alias_core_modules_are_left_whole() {
        let engine = module(ConstExpr::i32_const(16), false);
        // An export of the engine module adds a module index the split would
        // have to move.
        let mut exported = component(&engine);
        let mut exports = wasm_encoder::ComponentExportSection::new();
        exports.export("engine", ComponentExportKind::Module, 0, None);
        let mut c = wasm_encoder::Component::new();
        c.section(&exports);
        let tail = c.finish();
        exported.extend_from_slice(&tail[8..]);
        valid(&exported);
        assert_eq!(split(&exported).expect("parses"), None);
        // So does an alias of it.
        let mut aliased = component(&engine);
        let mut aliases = ComponentAliasSection::new();
        aliases.alias(Alias::Outer {
            kind: ComponentOuterAliasKind::CoreModule,
            count: 0,
            index: 0,
        });
        let mut c = wasm_encoder::Component::new();
        c.section(&aliases);
        let tail = c.finish();
        aliased.extend_from_slice(&tail[8..]);
        valid(&aliased);
        assert_eq!(split(&aliased).expect("parses"), None);
    }

    #[test]
    fn a_cut_short_component_is_an_error_not_a_panic() {
        let whole = component(&module(ConstExpr::i32_const(16), false));
        for cut in [0, 7, 9, whole.len() / 2, whole.len() - 1] {
            assert!(split(&whole[..cut]).is_err(), "cut at {cut}");
        }
    }
}
