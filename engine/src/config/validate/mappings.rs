//! A connector's mappings compiled: the structural template of `spec.mapping` and those of
//! a pull resource type and its read, each one's errors reported where they are written.

use std::collections::BTreeMap;

use super::context::Ctx;
use crate::config::mapping::Compiler;
use crate::model::mapping::Expr;
use crate::model::template::{Table, Templates};

/// A mapping of a pull resource type (`read`: of its read) compiled in `pull`, made a
/// [`Mapping`] once the connector's templates are complete.
pub(super) struct OwnMapping {
    pub resource_type: String,
    pub read: bool,
    pub root: Expr,
}

/// Compiles the structural template at `at` (its errors reported where they are); `None` when
/// it has errors.
pub(super) fn compile_mapping(
    ctx: &mut Ctx<'_>,
    at: &[String],
    templates: &mut Templates,
    tables: &BTreeMap<String, Table>,
) -> Option<Expr> {
    let node = ctx.doc.node.descend(at).clone();
    let mut compiler = Compiler {
        templates,
        tables,
        errors: Vec::new(),
    };
    let expr = compiler.compile(&node, at);
    let ok = compiler.errors.is_empty();
    for e in compiler.errors {
        let loc = crate::config::diagnostic::Location {
            line: e.line,
            column: e.column,
            path: crate::config::yaml::display_path(&e.at),
        };
        ctx.diags.push(
            crate::config::diagnostic::Diagnostic::error(&ctx.doc.file, &loc, e.message)
                .with_hint(e.hint),
        );
    }
    ok.then_some(expr)
}
