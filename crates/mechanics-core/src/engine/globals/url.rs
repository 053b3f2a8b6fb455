//! `URL` and `URLSearchParams`, as the URL standard defines them, over the `url` crate (its
//! `quirks` module is that standard's JavaScript API: the same getters and setters) and
//! `form_urlencoded`.
//!
//! A URL's `searchParams` is linked to it both ways, as in browsers: changing the parameters
//! rewrites the URL's query, and setting `href` or `search` re-reads the parameters.

use std::cell::RefCell;

use boa_engine::builtins::object::OrdinaryObject;
use boa_engine::class::{Class, ClassBuilder};
use boa_engine::gc::GcRefCell;
use boa_engine::object::builtins::JsArray;
use boa_engine::property::{Attribute, PropertyDescriptor};
use boa_engine::{
    Context, Finalize, JsData, JsObject, JsResult, JsString, JsSymbol, JsValue, NativeFunction,
    Trace, js_string,
};
use url::quirks;

use super::Budget;

/// The value of the `URL` global.
pub(super) fn url_constructor(context: &mut Context) -> JsResult<JsValue> {
    super::constructor_of::<Url>(context)
}

/// The value of the `URLSearchParams` global.
pub(super) fn params_constructor(context: &mut Context) -> JsResult<JsValue> {
    super::constructor_of::<SearchParams>(context)
}

/// A `URL` object: the parsed URL and, once read, its `searchParams` object.
#[derive(Debug, Trace, Finalize, JsData)]
pub(super) struct Url {
    // No JavaScript values inside: a parsed URL.
    #[unsafe_ignore_trace]
    url: RefCell<url::Url>,
    params: GcRefCell<Option<JsObject>>,
}

/// Reads one component of a URL.
type Getter = fn(&url::Url) -> String;
/// Writes one component of a URL; invalid values are ignored, as the standard says.
type Setter = fn(&mut url::Url, &str);

/// The components with a getter and a setter (`href` and `origin` are handled apart).
const COMPONENTS: [(&str, Getter, Setter); 9] = [
    (
        "protocol",
        |url| quirks::protocol(url).to_owned(),
        |url, value| {
            let _ = quirks::set_protocol(url, value);
        },
    ),
    (
        "username",
        |url| quirks::username(url).to_owned(),
        |url, value| {
            let _ = quirks::set_username(url, value);
        },
    ),
    (
        "password",
        |url| quirks::password(url).to_owned(),
        |url, value| {
            let _ = quirks::set_password(url, value);
        },
    ),
    (
        "host",
        |url| quirks::host(url).to_owned(),
        |url, value| {
            let _ = quirks::set_host(url, value);
        },
    ),
    (
        "hostname",
        |url| quirks::hostname(url).to_owned(),
        |url, value| {
            let _ = quirks::set_hostname(url, value);
        },
    ),
    (
        "port",
        |url| quirks::port(url).to_owned(),
        |url, value| {
            let _ = quirks::set_port(url, value);
        },
    ),
    (
        "pathname",
        |url| quirks::pathname(url).to_owned(),
        quirks::set_pathname,
    ),
    (
        "search",
        |url| quirks::search(url).to_owned(),
        quirks::set_search,
    ),
    ("hash", |url| quirks::hash(url).to_owned(), quirks::set_hash),
];

/// A string argument as a Rust string (WebIDL `USVString`: lone surrogates become U+FFFD).
fn usv_string(value: Option<&JsValue>, context: &mut Context) -> JsResult<String> {
    Ok(value
        .cloned()
        .unwrap_or_default()
        .to_string(context)?
        .to_std_string_lossy())
}

/// `input` parsed against `base`, if any; `None` when either does not parse.
fn parse(input: &str, base: Option<&str>) -> Option<url::Url> {
    match base {
        Some(base) => url::Url::parse(base).ok()?.join(input).ok(),
        None => url::Url::parse(input).ok(),
    }
}

/// The `url` and `base` arguments of the constructor and the static methods.
fn url_and_base(args: &[JsValue], context: &mut Context) -> JsResult<(String, Option<String>)> {
    let input = usv_string(args.first(), context)?;
    let base = match args.get(1) {
        None => None,
        Some(base) if base.is_undefined() => None,
        Some(base) => Some(usv_string(Some(base), context)?),
    };
    Ok((input, base))
}

/// At most 100 characters of `text`, quoted, for an error message.
fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(100).collect();
    if cut.len() < text.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

impl Class for Url {
    const NAME: &'static str = "URL";
    const LENGTH: usize = 1;
    const ATTRIBUTES: Attribute = Attribute::WRITABLE.union(Attribute::CONFIGURABLE);

    fn init(class: &mut ClassBuilder<'_>) -> JsResult<()> {
        for (index, (name, _, _)) in COMPONENTS.iter().enumerate() {
            let getter = super::function(
                class.context(),
                &format!("get {name}"),
                0,
                NativeFunction::from_copy_closure(move |this, _, _| {
                    let (name, get, _) = COMPONENTS[index];
                    let url = super::this_instance::<Url>(this, &format!("URL.prototype.{name}"))?;
                    let value = get(&url.borrow().data().url.borrow());
                    Ok(JsString::from(value).into())
                }),
            );
            let setter = super::function(
                class.context(),
                &format!("set {name}"),
                1,
                NativeFunction::from_copy_closure(move |this, args, context| {
                    let (name, _, set) = COMPONENTS[index];
                    let url = super::this_instance::<Url>(this, &format!("URL.prototype.{name}"))?;
                    let value = usv_string(args.first(), context)?;
                    set(&mut url.borrow().data().url.borrow_mut(), &value);
                    refresh_params(&url, context)?;
                    Ok(JsValue::undefined())
                }),
            );
            class.accessor(
                JsString::from(*name),
                Some(getter),
                Some(setter),
                Attribute::ENUMERABLE | Attribute::CONFIGURABLE,
            );
        }
        let href_get = super::function(
            class.context(),
            "get href",
            0,
            NativeFunction::from_fn_ptr(href),
        );
        let href_set = super::function(
            class.context(),
            "set href",
            1,
            NativeFunction::from_fn_ptr(set_href),
        );
        let origin = super::function(
            class.context(),
            "get origin",
            0,
            NativeFunction::from_fn_ptr(|this, _, _| {
                let url = super::this_instance::<Url>(this, "URL.prototype.origin")?;
                let origin = quirks::origin(&url.borrow().data().url.borrow());
                Ok(JsString::from(origin).into())
            }),
        );
        let search_params = super::function(
            class.context(),
            "get searchParams",
            0,
            NativeFunction::from_fn_ptr(search_params),
        );
        class
            .accessor(
                js_string!("href"),
                Some(href_get),
                Some(href_set),
                Attribute::ENUMERABLE | Attribute::CONFIGURABLE,
            )
            .accessor(
                js_string!("origin"),
                Some(origin),
                None,
                Attribute::ENUMERABLE | Attribute::CONFIGURABLE,
            )
            .accessor(
                js_string!("searchParams"),
                Some(search_params),
                None,
                Attribute::ENUMERABLE | Attribute::CONFIGURABLE,
            )
            .method(js_string!("toString"), 0, NativeFunction::from_fn_ptr(href))
            .method(js_string!("toJSON"), 0, NativeFunction::from_fn_ptr(href))
            .static_method(
                js_string!("canParse"),
                1,
                NativeFunction::from_fn_ptr(|_, args, context| {
                    let (input, base) = url_and_base(args, context)?;
                    Ok(parse(&input, base.as_deref()).is_some().into())
                }),
            )
            .static_method(
                js_string!("parse"),
                1,
                NativeFunction::from_fn_ptr(|_, args, context| {
                    let (input, base) = url_and_base(args, context)?;
                    match parse(&input, base.as_deref()) {
                        Some(url) => Ok(super::instance(Url::new(url), context)?.into()),
                        None => Ok(JsValue::null()),
                    }
                }),
            )
            .property(
                JsSymbol::to_string_tag(),
                js_string!("URL"),
                Attribute::CONFIGURABLE,
            );
        Ok(())
    }

    /// `new URL(url, base)`.
    fn data_constructor(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<Self> {
        let (input, base) = url_and_base(args, context)?;
        if let Some(base) = &base
            && url::Url::parse(base).is_err()
        {
            return Err(super::type_error(format!(
                "URL: Invalid base URL {}",
                quoted(base)
            )));
        }
        match parse(&input, base.as_deref()) {
            Some(url) => Ok(Self::new(url)),
            None => Err(super::type_error(format!(
                "URL: Invalid URL {}",
                quoted(&input)
            ))),
        }
    }
}

impl Url {
    fn new(url: url::Url) -> Self {
        Self {
            url: RefCell::new(url),
            params: GcRefCell::new(None),
        }
    }
}

/// `URL.prototype.href` (also `toString` and `toJSON`).
fn href(this: &JsValue, _: &[JsValue], _: &mut Context) -> JsResult<JsValue> {
    let url = super::this_instance::<Url>(this, "URL.prototype.href")?;
    let href = quirks::href(&url.borrow().data().url.borrow()).to_owned();
    Ok(JsString::from(href).into())
}

/// `URL.prototype.href = value`: a whole new URL, or a `TypeError` if it does not parse.
fn set_href(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let url = super::this_instance::<Url>(this, "URL.prototype.href")?;
    let value = usv_string(args.first(), context)?;
    let parsed = quirks::set_href(&mut url.borrow().data().url.borrow_mut(), &value);
    if parsed.is_err() {
        return Err(super::type_error(format!(
            "URL: Invalid URL {}",
            quoted(&value)
        )));
    }
    refresh_params(&url, context)?;
    Ok(JsValue::undefined())
}

/// `URL.prototype.searchParams`: one `URLSearchParams` per URL, linked to it.
fn search_params(this: &JsValue, _: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let url = super::this_instance::<Url>(this, "URL.prototype.searchParams")?;
    if let Some(params) = url.borrow().data().params.borrow().clone() {
        return Ok(params.into());
    }
    let query = url.borrow().data().url.borrow().query().map(str::to_owned);
    let list = parse_list(query.as_deref().unwrap_or(""), &Budget::of(context)?)?;
    let params = super::instance(
        SearchParams {
            list: RefCell::new(list),
            url: Some(url.clone().upcast()),
        },
        context,
    )?;
    *url.borrow().data().params.borrow_mut() = Some(params.clone());
    Ok(params.into())
}

/// Re-reads the parameters of `url`'s `searchParams`, if it has one, after its query changed.
fn refresh_params(url: &JsObject<Url>, context: &mut Context) -> JsResult<()> {
    let Some(params) = url.borrow().data().params.borrow().clone() else {
        return Ok(());
    };
    let query = url.borrow().data().url.borrow().query().map(str::to_owned);
    let list = parse_list(query.as_deref().unwrap_or(""), &Budget::of(context)?)?;
    if let Some(params) = params.downcast_ref::<SearchParams>() {
        *params.list.borrow_mut() = list;
    }
    Ok(())
}

/// Parses `application/x-www-form-urlencoded` text into name-value pairs.
fn parse_list(input: &str, budget: &Budget) -> JsResult<Vec<(String, String)>> {
    let mut list = Vec::new();
    for (name, value) in form_urlencoded::parse(input.as_bytes()) {
        budget.item()?;
        list.push((name.into_owned(), value.into_owned()));
    }
    Ok(list)
}

/// Serializes name-value pairs as `application/x-www-form-urlencoded` text.
fn serialize(list: &[(String, String)], budget: &Budget) -> JsResult<String> {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in list {
        budget.item()?;
        serializer.append_pair(name, value);
    }
    Ok(serializer.finish())
}

/// A `URLSearchParams` object: its list of pairs and the `URL` whose query it is, if any.
#[derive(Debug, Trace, Finalize, JsData)]
pub(super) struct SearchParams {
    // No JavaScript values inside: strings.
    #[unsafe_ignore_trace]
    list: RefCell<Vec<(String, String)>>,
    url: Option<JsObject>,
}

impl SearchParams {
    /// Writes the list back into the linked URL's query (the standard's "update steps").
    fn update(&self, budget: &Budget) -> JsResult<()> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let serialized = serialize(&self.list.borrow(), budget)?;
        if let Some(url) = url.downcast_ref::<Url>() {
            let query = (!serialized.is_empty()).then_some(serialized.as_str());
            url.url.borrow_mut().set_query(query);
        }
        Ok(())
    }
}

/// Runs `f` on the `URLSearchParams` that `this` is, for the method `method`.
fn with_params<R>(
    this: &JsValue,
    method: &str,
    f: impl FnOnce(&SearchParams) -> JsResult<R>,
) -> JsResult<R> {
    let params = super::this_instance::<SearchParams>(this, method)?;
    let params = params.borrow();
    f(params.data())
}

/// The pairs an `init` object gives: a sequence of pairs (anything iterable) or a record.
fn pairs_of(
    init: &JsObject,
    budget: &Budget,
    context: &mut Context,
) -> JsResult<Vec<(String, String)>> {
    let mut list = Vec::new();
    let iterable = super::for_each_of(init, budget, context, |pair, context| {
        let Some(pair) = pair.as_object() else {
            return Err(super::type_error(
                "URLSearchParams: each item of the sequence must be a pair (an iterable of two \
                 strings)",
            ));
        };
        let mut items = Vec::new();
        let iterable = super::for_each_of(&pair, budget, context, |item, _| {
            items.push(item);
            Ok(())
        })?;
        if !iterable || items.len() != 2 {
            return Err(super::type_error(
                "URLSearchParams: each item of the sequence must be a pair of exactly two strings",
            ));
        }
        let name = usv_string(items.first(), context)?;
        let value = usv_string(items.get(1), context)?;
        list.push((name, value));
        Ok(())
    })?;
    if iterable {
        return Ok(list);
    }
    let keys = OrdinaryObject::keys(&JsValue::undefined(), &[init.clone().into()], context)?;
    let keys = keys
        .as_object()
        .and_then(|keys| JsArray::from_object(keys).ok())
        .ok_or_else(|| super::type_error("URLSearchParams: the record has no keys"))?;
    let length = keys.length(context)?;
    for index in 0..length {
        budget.item()?;
        let key = keys.get(index, context)?;
        let value = init.get(key.to_property_key(context)?, context)?;
        list.push((
            usv_string(Some(&key), context)?,
            usv_string(Some(&value), context)?,
        ));
    }
    Ok(list)
}

impl Class for SearchParams {
    const NAME: &'static str = "URLSearchParams";
    const ATTRIBUTES: Attribute = Attribute::WRITABLE.union(Attribute::CONFIGURABLE);

    fn init(class: &mut ClassBuilder<'_>) -> JsResult<()> {
        let methods: [(&str, usize, NativeFunction); 12] = [
            ("append", 2, NativeFunction::from_fn_ptr(append)),
            ("delete", 1, NativeFunction::from_fn_ptr(delete)),
            ("get", 1, NativeFunction::from_fn_ptr(get)),
            ("getAll", 1, NativeFunction::from_fn_ptr(get_all)),
            ("has", 1, NativeFunction::from_fn_ptr(has)),
            ("set", 2, NativeFunction::from_fn_ptr(set)),
            ("sort", 0, NativeFunction::from_fn_ptr(sort)),
            ("toString", 0, NativeFunction::from_fn_ptr(to_string)),
            ("forEach", 1, NativeFunction::from_fn_ptr(for_each)),
            ("keys", 0, NativeFunction::from_fn_ptr(keys)),
            ("values", 0, NativeFunction::from_fn_ptr(values)),
            ("entries", 0, NativeFunction::from_fn_ptr(entries)),
        ];
        for (name, length, body) in methods {
            class.method(JsString::from(name), length, body);
        }
        let entries = super::function(
            class.context(),
            "entries",
            0,
            NativeFunction::from_fn_ptr(entries),
        );
        let size = super::function(
            class.context(),
            "get size",
            0,
            NativeFunction::from_fn_ptr(|this, _, _| {
                with_params(this, "URLSearchParams.prototype.size", |params| {
                    Ok(params.list.borrow().len().into())
                })
            }),
        );
        class
            .property_descriptor(
                JsSymbol::iterator(),
                PropertyDescriptor::builder()
                    .value(entries)
                    .writable(true)
                    .enumerable(false)
                    .configurable(true),
            )
            .accessor(
                js_string!("size"),
                Some(size),
                None,
                Attribute::ENUMERABLE | Attribute::CONFIGURABLE,
            )
            .property(
                JsSymbol::to_string_tag(),
                js_string!("URLSearchParams"),
                Attribute::CONFIGURABLE,
            );
        Ok(())
    }

    /// `new URLSearchParams(init)`: a query string (a leading `?` is skipped), a sequence of
    /// pairs, or a record of names to values.
    fn data_constructor(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<Self> {
        let budget = Budget::of(context)?;
        let list = match args.first() {
            None => Vec::new(),
            Some(init) if init.is_undefined() => Vec::new(),
            Some(init) => match init.as_object() {
                Some(object) => pairs_of(&object, &budget, context)?,
                None => {
                    let text = usv_string(Some(init), context)?;
                    parse_list(text.strip_prefix('?').unwrap_or(&text), &budget)?
                }
            },
        };
        Ok(Self {
            list: RefCell::new(list),
            url: None,
        })
    }
}

/// The name (and value, when given and not `undefined`) arguments of a method.
fn name_and_value(args: &[JsValue], context: &mut Context) -> JsResult<(String, Option<String>)> {
    let name = usv_string(args.first(), context)?;
    let value = match args.get(1) {
        None => None,
        Some(value) if value.is_undefined() => None,
        Some(value) => Some(usv_string(Some(value), context)?),
    };
    Ok((name, value))
}

fn append(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let name = usv_string(args.first(), context)?;
    let value = usv_string(args.get(1), context)?;
    let budget = Budget::of(context)?;
    with_params(this, "URLSearchParams.prototype.append", |params| {
        params.list.borrow_mut().push((name, value));
        params.update(&budget)
    })?;
    Ok(JsValue::undefined())
}

fn delete(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let (name, value) = name_and_value(args, context)?;
    let budget = Budget::of(context)?;
    with_params(this, "URLSearchParams.prototype.delete", |params| {
        params
            .list
            .borrow_mut()
            .retain(|(n, v)| *n != name || value.as_ref().is_some_and(|value| v != value));
        params.update(&budget)
    })?;
    Ok(JsValue::undefined())
}

fn get(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let name = usv_string(args.first(), context)?;
    with_params(this, "URLSearchParams.prototype.get", |params| {
        Ok(params
            .list
            .borrow()
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(JsValue::null, |(_, v)| JsString::from(v.as_str()).into()))
    })
}

fn get_all(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let name = usv_string(args.first(), context)?;
    let values: Vec<JsValue> = with_params(this, "URLSearchParams.prototype.getAll", |params| {
        Ok(params
            .list
            .borrow()
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| JsString::from(v.as_str()).into())
            .collect())
    })?;
    Ok(JsArray::from_iter(values, context).into())
}

fn has(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let (name, value) = name_and_value(args, context)?;
    with_params(this, "URLSearchParams.prototype.has", |params| {
        Ok(params
            .list
            .borrow()
            .iter()
            .any(|(n, v)| *n == name && value.as_ref().is_none_or(|value| v == value))
            .into())
    })
}

/// `set(name, value)`: the first pair named `name` gets `value`, the others are removed; a new
/// pair is appended when there is none.
fn set(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let name = usv_string(args.first(), context)?;
    let value = usv_string(args.get(1), context)?;
    let budget = Budget::of(context)?;
    with_params(this, "URLSearchParams.prototype.set", |params| {
        {
            let mut list = params.list.borrow_mut();
            match list.iter().position(|(n, _)| *n == name) {
                Some(first) => {
                    list[first].1 = value;
                    let mut index = 0;
                    list.retain(|(n, _)| {
                        let keep = index <= first || *n != name;
                        index += 1;
                        keep
                    });
                }
                None => list.push((name, value)),
            }
        }
        params.update(&budget)
    })?;
    Ok(JsValue::undefined())
}

/// `sort()`: a stable sort by name, comparing UTF-16 code units as JavaScript does.
fn sort(this: &JsValue, _: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let budget = Budget::of(context)?;
    with_params(this, "URLSearchParams.prototype.sort", |params| {
        params
            .list
            .borrow_mut()
            .sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
        params.update(&budget)
    })?;
    Ok(JsValue::undefined())
}

fn to_string(this: &JsValue, _: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let budget = Budget::of(context)?;
    let text = with_params(this, "URLSearchParams.prototype.toString", |params| {
        serialize(&params.list.borrow(), &budget)
    })?;
    Ok(JsString::from(text).into())
}

/// `forEach(callback, thisArg)`: calls `callback(value, name, params)` for each pair, reading
/// the list afresh at every step as browsers do.
fn for_each(this: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    const METHOD: &str = "URLSearchParams.prototype.forEach";
    let callback = args
        .first()
        .and_then(JsValue::as_callable)
        .ok_or_else(|| super::type_error(format!("{METHOD}: the callback is not a function")))?;
    let this_arg = args.get(1).cloned().unwrap_or_default();
    let mut index = 0;
    loop {
        let pair = with_params(this, METHOD, |params| {
            Ok(params.list.borrow().get(index).cloned())
        })?;
        let Some((name, value)) = pair else {
            return Ok(JsValue::undefined());
        };
        callback.call(
            &this_arg,
            &[
                JsString::from(value).into(),
                JsString::from(name).into(),
                this.clone(),
            ],
            context,
        )?;
        index += 1;
    }
}

/// An iterator over a snapshot of the list, each pair shown by `show`.
fn iterate(
    this: &JsValue,
    method: &str,
    show: fn(&(String, String), &mut Context) -> JsValue,
    context: &mut Context,
) -> JsResult<JsValue> {
    let list = with_params(this, method, |params| Ok(params.list.borrow().clone()))?;
    let budget = Budget::of(context)?;
    let mut items = Vec::with_capacity(list.len());
    for pair in &list {
        budget.item()?;
        items.push(show(pair, context));
    }
    let array = JsArray::from_iter(items, context);
    let values = context.intrinsics().objects().array_prototype_values();
    values.call(&array.into(), &[], context)
}

fn keys(this: &JsValue, _: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    iterate(
        this,
        "URLSearchParams.prototype.keys",
        |(name, _), _| JsString::from(name.as_str()).into(),
        context,
    )
}

fn values(this: &JsValue, _: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    iterate(
        this,
        "URLSearchParams.prototype.values",
        |(_, value), _| JsString::from(value.as_str()).into(),
        context,
    )
}

fn entries(this: &JsValue, _: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    iterate(
        this,
        "URLSearchParams.prototype.entries",
        |(name, value), context| {
            JsArray::from_iter(
                [
                    JsString::from(name.as_str()).into(),
                    JsString::from(value.as_str()).into(),
                ],
                context,
            )
            .into()
        },
        context,
    )
}
