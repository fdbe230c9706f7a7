//! The `#[task]` attribute of `wrun-guest`. See that crate for the user guide
//! and `guest-sdk/ABI.md` for what the generated code must produce.
//!
//! For `#[task] fn inc(x: i64) -> i64` the macro keeps the function as it is
//! and adds, in an anonymous `const` block:
//! - an argument struct whose deserializer names the failing parameter,
//! - the export `wrun.task.inc: (args_ptr: i32, args_len: i32) -> reply_ptr: i32`,
//! - a JSON record of the signature in the `wrun.tasks` custom section.

#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::{
    FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Type, parse_macro_input,
    spanned::Spanned,
};

/// Marks a function as a wrun task: exported from the module, callable by
/// name, its arguments and result encoded as MessagePack.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[task] takes no arguments")
            .to_compile_error()
            .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    match expand(&function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(function: &ItemFn) -> syn::Result<TokenStream2> {
    let signature = &function.sig;
    if signature.asyncness.is_some() {
        return Err(syn::Error::new(
            signature.span(),
            "a wrun task cannot be async",
        ));
    }
    if !signature.generics.params.is_empty() {
        return Err(syn::Error::new(
            signature.generics.span(),
            "a wrun task cannot be generic",
        ));
    }
    let name = &signature.ident;
    let task_name = name.to_string();

    let mut param_names = Vec::new();
    let mut param_types = Vec::new();
    for (index, input) in signature.inputs.iter().enumerate() {
        let FnArg::Typed(typed) = input else {
            return Err(syn::Error::new(
                input.span(),
                "a wrun task cannot take `self`",
            ));
        };
        if let Type::Reference(reference) = &*typed.ty {
            return Err(syn::Error::new(
                reference.span(),
                "a wrun task takes owned arguments (String, Vec<T>, ...), not references",
            ));
        }
        let param_name = match &*typed.pat {
            Pat::Ident(ident) => ident.ident.to_string().trim_start_matches("r#").to_owned(),
            _ => format!("arg{index}"),
        };
        param_names.push(param_name);
        param_types.push((*typed.ty).clone());
    }

    let (returns_result, return_descriptor) = match &signature.output {
        ReturnType::Default => (false, "unit".to_owned()),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (true, type_descriptor(ok)),
            None => (false, type_descriptor(ty)),
        },
    };

    let count = param_types.len();
    let bindings: Vec<_> = (0..count)
        .map(|i| format_ident!("__wrun_arg{}", i))
        .collect();
    let reads = param_types
        .iter()
        .zip(&param_names)
        .enumerate()
        .map(|(index, (ty, param))| {
            quote! { ::wrun_guest::__private::next_arg::<__A, #ty>(seq, #param, #index, #count)? }
        });
    let outcome = if returns_result {
        quote! { ::wrun_guest::__private::result_outcome(#name(#(#bindings),*)) }
    } else {
        quote! { ::wrun_guest::__private::value_outcome(#name(#(#bindings),*)) }
    };
    let export_name = format!("wrun.task.{task_name}");

    let params_json: Vec<String> = param_names
        .iter()
        .zip(&param_types)
        .map(|(param, ty)| {
            format!(
                "{{\"name\":{},\"type\":{}}}",
                json_string(param),
                json_string(&type_descriptor(ty))
            )
        })
        .collect();
    let record = format!(
        "{{\"abi\":1,\"name\":{},\"params\":[{}],\"returns\":{}}}\n",
        json_string(&task_name),
        params_json.join(","),
        json_string(&return_descriptor)
    );
    let record_bytes = syn::LitByteStr::new(record.as_bytes(), Span::call_site());
    let record_len = record.len();

    Ok(quote! {
        #function

        const _: () = {
            struct __WrunArgs(#(#param_types),*);

            impl<'de> ::wrun_guest::__private::ArgsFromSeq<'de> for __WrunArgs {
                const COUNT: usize = #count;
                #[allow(unused_variables)]
                fn from_seq<__A: ::wrun_guest::__private::serde::de::SeqAccess<'de>>(
                    seq: &mut __A,
                ) -> ::core::result::Result<Self, __A::Error> {
                    ::core::result::Result::Ok(__WrunArgs(#(#reads),*))
                }
            }

            impl<'de> ::wrun_guest::__private::serde::Deserialize<'de> for __WrunArgs {
                fn deserialize<__D: ::wrun_guest::__private::serde::Deserializer<'de>>(
                    deserializer: __D,
                ) -> ::core::result::Result<Self, __D::Error> {
                    deserializer.deserialize_seq(::wrun_guest::__private::ArgsVisitor::<__WrunArgs>::default())
                }
            }

            #[unsafe(export_name = #export_name)]
            extern "C" fn __wrun_task_export(
                args_ptr: *const u8,
                args_len: usize,
            ) -> *const ::wrun_guest::__private::Reply {
                // SAFETY: the host calls this export with the buffer it got
                // from `wrun_alloc(args_len)` and filled with `args_len` bytes
                // (guest-sdk/ABI.md).
                unsafe { ::wrun_guest::__private::run_task(args_ptr, args_len, |bytes| {
                    let __WrunArgs(#(#bindings),*) =
                        match ::wrun_guest::__private::decode_args::<__WrunArgs>(bytes) {
                            ::core::result::Result::Ok(args) => args,
                            ::core::result::Result::Err(outcome) => return outcome,
                        };
                    #outcome
                }) }
            }

            #[cfg(target_arch = "wasm32")]
            #[unsafe(link_section = "wrun.tasks")]
            #[used]
            static __WRUN_TASK_RECORD: [u8; #record_len] = *#record_bytes;
        };
    })
}

/// `Some(T)` when `ty` is spelled `Result<T, E>` (any path ending in `Result`).
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    generic_args(&last.arguments).into_iter().next()
}

fn generic_args(arguments: &PathArguments) -> Vec<&Type> {
    match arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The language-neutral type descriptor of ABI.md for a Rust type, read from
/// its spelling. Types the host cannot know (user structs, enums) are given by
/// name and checked by the guest when it decodes them.
fn type_descriptor(ty: &Type) -> String {
    match ty {
        Type::Tuple(tuple) if tuple.elems.is_empty() => "unit".to_owned(),
        Type::Tuple(tuple) => {
            let items: Vec<_> = tuple.elems.iter().map(type_descriptor).collect();
            format!("tuple<{}>", items.join(","))
        }
        Type::Array(array) => format!("list<{}>", type_descriptor(&array.elem)),
        Type::Paren(inner) => type_descriptor(&inner.elem),
        Type::Group(inner) => type_descriptor(&inner.elem),
        Type::Path(path) => {
            let Some(last) = path.path.segments.last() else {
                return "any".to_owned();
            };
            let args = generic_args(&last.arguments);
            let ident = last.ident.to_string();
            match (ident.as_str(), args.as_slice()) {
                (
                    "bool" | "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "f32"
                    | "f64",
                    [],
                ) => ident,
                // wasm32: pointer-sized integers are 32 bits wide.
                ("usize", []) => "u32".to_owned(),
                ("isize", []) => "i32".to_owned(),
                ("String", []) => "string".to_owned(),
                ("Vec" | "VecDeque" | "HashSet" | "BTreeSet" | "LinkedList", [item]) => {
                    format!("list<{}>", type_descriptor(item))
                }
                ("Option", [item]) => format!("option<{}>", type_descriptor(item)),
                ("Box" | "Rc" | "Arc", [item]) => type_descriptor(item),
                ("HashMap" | "BTreeMap", [key, value, ..]) => {
                    format!("map<{},{}>", type_descriptor(key), type_descriptor(value))
                }
                _ => ident,
            }
        }
        _ => "any".to_owned(),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
