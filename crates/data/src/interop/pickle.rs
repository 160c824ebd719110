//! A small, strict unpickler: the opcodes that Python 2 and 3 emit for tuples, lists,
//! bools, ints, bytes/str and the `GLOBAL`/`REDUCE`/`BUILD` trio that numpy arrays use,
//! and nothing else. Every length is checked against the bytes actually present before
//! anything is allocated; containers are sealed once nested, so the value graph can hold no
//! cycle and stays at most `MAX_DEPTH` deep (dropping it cannot overflow the stack).
//!
//! `Flavour::TorchSave` also admits what `torch.save` writes for a state dict: dicts
//! (`collections.OrderedDict()` is built as one), persistent ids (the tensor storages) and
//! floats; a pair file with those opcodes is still refused.

use anyhow::{bail, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Far more than any pair file needs (numpy arrays nest 4 deep).
const MAX_DEPTH: u8 = 16;

#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Bytes(Arc<[u8]>),
    Str(Rc<str>),
    Tuple(Rc<Tuple>),
    List(Rc<List>),
    Float(f64),
    Global(Rc<(String, String)>),
    Object(Rc<Object>),
    Dict(Rc<Dict>),
    /// `BINPERSID`: the id the pickler's `persistent_id` gave (torch: a storage reference).
    Persistent(Rc<Tuple>),
}

/// Which opcodes a file may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// insightface's pair sets: no dicts, no persistent ids.
    PairFile,
    /// `torch.save`'s `data.pkl`.
    TorchSave,
}

#[derive(Debug)]
pub(crate) struct Tuple {
    pub items: Vec<Value>,
    depth: u8,
}

#[derive(Debug, Default)]
pub(crate) struct List {
    pub items: RefCell<Vec<Value>>,
    sealed: Cell<bool>,
    depth: Cell<u8>,
}

/// A dict or `OrderedDict`, items in pickle order, with the `BUILD` state an `OrderedDict`
/// carries (a state dict's `_metadata`).
#[derive(Debug, Default)]
pub(crate) struct Dict {
    pub items: RefCell<Vec<(Value, Value)>>,
    pub state: RefCell<Option<Value>>,
    sealed: Cell<bool>,
    depth: Cell<u8>,
}

/// What `REDUCE` made of a callable we do not run: the call, and the `BUILD` state if any.
#[derive(Debug)]
pub(crate) struct Object {
    pub callable: (String, String),
    pub args: Rc<Tuple>,
    pub state: RefCell<Option<Value>>,
    sealed: Cell<bool>,
    depth: Cell<u8>,
}

impl Value {
    fn depth(&self) -> u8 {
        match self {
            Value::Tuple(t) => t.depth,
            Value::List(l) => l.depth.get(),
            Value::Object(o) => o.depth.get(),
            Value::Dict(d) => d.depth.get(),
            Value::Persistent(t) => t.depth,
            _ => 0,
        }
    }

    /// Marks a container as nested in another: it may no longer change.
    fn seal(&self) {
        match self {
            Value::List(l) => l.sealed.set(true),
            Value::Object(o) => o.sealed.set(true),
            Value::Dict(d) => d.sealed.set(true),
            _ => {}
        }
    }

    /// A short description for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Bytes(b) => format!("bytes of length {}", b.len()),
            Value::Str(s) => format!("str of length {}", s.chars().count()),
            Value::Tuple(t) => format!("tuple of length {}", t.items.len()),
            Value::List(l) => format!("list of length {}", l.items.borrow().len()),
            Value::Global(g) => format!("global {}.{}", g.0, g.1),
            Value::Object(o) => format!("{}.{}(...) object", o.callable.0, o.callable.1),
            Value::Float(x) => format!("float {x}"),
            Value::Dict(d) => format!("dict of length {}", d.items.borrow().len()),
            Value::Persistent(t) => format!("persistent id of length {}", t.items.len()),
        }
    }
}

/// The depth a container of `items` has, or an error past `MAX_DEPTH`.
fn nest(items: &[Value], at: usize) -> Result<u8> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        bail!("byte {at}: containers nest deeper than {MAX_DEPTH} levels");
    }
    items.iter().for_each(Value::seal);
    Ok(depth)
}

fn tuple(items: Vec<Value>, at: usize) -> Result<Value> {
    let depth = nest(&items, at)?;
    Ok(Value::Tuple(Rc::new(Tuple { items, depth })))
}

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            bail!("truncated: {what} at byte {} needs {n} bytes, {left} left", self.pos);
        }
        let out = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    fn uint(&mut self, n: usize, what: &str) -> Result<u64> {
        Ok(self.take(n as u64, what)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn line(&mut self, what: &str) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            bail!("truncated: {what} at byte {} has no end of line", self.pos);
        };
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|_| anyhow::anyhow!("{what} at byte {} is not text", self.pos))?;
        self.pos += end + 1;
        Ok(text)
    }
}

pub(crate) struct Unpickler<'a> {
    input: Input<'a>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    flavour: Flavour,
}

/// Loads one pair-file pickle from `data`, which must hold exactly that pickle.
pub(crate) fn load(data: &[u8]) -> Result<Value> {
    load_as(data, Flavour::PairFile)
}

/// Loads one pickle of `flavour` from `data`, which must hold exactly that pickle.
pub(crate) fn load_as(data: &[u8], flavour: Flavour) -> Result<Value> {
    let mut u = Unpickler {
        input: Input { data, pos: 0 },
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        flavour,
    };
    loop {
        let at = u.input.pos;
        let op = u.input.take(1, "an opcode")?[0];
        if op == b'.' {
            return u.stop(at);
        }
        u.step(op, at)?;
    }
}

impl Unpickler<'_> {
    fn stop(&mut self, at: usize) -> Result<Value> {
        if self.stack.len() != 1 || !self.marks.is_empty() {
            bail!(
                "byte {at}: STOP with {} values and {} marks on the stack, expected one value",
                self.stack.len(),
                self.marks.len()
            );
        }
        let trailing = self.input.data.len() - self.input.pos;
        if trailing > 0 {
            bail!("{trailing} bytes follow the end of the pickle");
        }
        Ok(self.stack.pop().expect("one value"))
    }

    fn pop(&mut self, at: usize, op: &str) -> Result<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            bail!("byte {at}: {op} would pop a MARK");
        }
        self.stack.pop().ok_or_else(|| anyhow::anyhow!("byte {at}: {op} on an empty stack"))
    }

    fn pop_mark(&mut self, at: usize, op: &str) -> Result<Vec<Value>> {
        let Some(mark) = self.marks.pop() else { bail!("byte {at}: {op} without a MARK") };
        Ok(self.stack.split_off(mark))
    }

    fn push_bytes(&mut self, n: u64, what: &str) -> Result<()> {
        let data = self.input.take(n, what)?;
        self.stack.push(Value::Bytes(Arc::from(data)));
        Ok(())
    }

    fn push_str(&mut self, n: u64, at: usize, what: &str) -> Result<()> {
        let data = self.input.take(n, what)?;
        let text = std::str::from_utf8(data).map_err(|_| anyhow::anyhow!("byte {at}: {what} is not valid UTF-8"))?;
        self.stack.push(Value::Str(Rc::from(text)));
        Ok(())
    }

    fn step(&mut self, op: u8, at: usize) -> Result<()> {
        let inp = &mut self.input;
        match op {
            0x80 => {
                let proto = inp.uint(1, "PROTO")?;
                if !(2..=5).contains(&proto) {
                    bail!("byte {at}: pickle protocol {proto} is not supported (2 to 5 are)");
                }
            }
            0x95 => {
                let n = inp.uint(8, "FRAME")?;
                if n > (inp.data.len() - inp.pos) as u64 {
                    bail!("truncated: FRAME at byte {at} announces {n} bytes, {} left", inp.data.len() - inp.pos);
                }
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => drop(self.pop(at, "POP")?),
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'I' => self.int_line(at)?,
            b'J' => {
                let v = inp.uint(4, "BININT")? as u32 as i32;
                self.stack.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = inp.uint(1, "BININT1")?;
                self.stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = inp.uint(2, "BININT2")?;
                self.stack.push(Value::Int(v as i64));
            }
            0x8a => self.long1(at)?,
            b'T' => {
                let n = inp.uint(4, "BINSTRING")? as u32 as i32;
                if n < 0 {
                    bail!("byte {at}: BINSTRING with negative length {n}");
                }
                self.push_bytes(n as u64, "BINSTRING")?;
            }
            b'U' | b'C' => {
                let n = inp.uint(1, "SHORT_BINSTRING")?;
                self.push_bytes(n, if op == b'U' { "SHORT_BINSTRING" } else { "SHORT_BINBYTES" })?;
            }
            b'B' => {
                let n = inp.uint(4, "BINBYTES")?;
                self.push_bytes(n, "BINBYTES")?;
            }
            0x8e | 0x96 => {
                let n = inp.uint(8, "BINBYTES8")?;
                self.push_bytes(n, if op == 0x8e { "BINBYTES8" } else { "BYTEARRAY8" })?;
            }
            b'X' => {
                let n = inp.uint(4, "BINUNICODE")?;
                self.push_str(n, at, "BINUNICODE")?;
            }
            0x8c => {
                let n = inp.uint(1, "SHORT_BINUNICODE")?;
                self.push_str(n, at, "SHORT_BINUNICODE")?;
            }
            0x8d => {
                let n = inp.uint(8, "BINUNICODE8")?;
                self.push_str(n, at, "BINUNICODE8")?;
            }
            _ => return self.step_structure(op, at),
        }
        Ok(())
    }

    fn step_structure(&mut self, op: u8, at: usize) -> Result<()> {
        match op {
            b']' => self.stack.push(Value::List(Rc::default())),
            b')' => self.stack.push(tuple(Vec::new(), at)?),
            b't' => {
                let items = self.pop_mark(at, "TUPLE")?;
                self.stack.push(tuple(items, at)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n || self.marks.last().is_some_and(|&m| m > self.stack.len() - n) {
                    bail!("byte {at}: TUPLE{n} needs {n} values on the stack");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(tuple(items, at)?);
            }
            b'l' => {
                let items = self.pop_mark(at, "LIST")?;
                let list = Value::List(Rc::default());
                self.stack.push(list);
                self.extend_top(items, at)?;
            }
            b'a' => {
                let item = self.pop(at, "APPEND")?;
                self.extend_top(vec![item], at)?;
            }
            b'e' => {
                let items = self.pop_mark(at, "APPENDS")?;
                self.extend_top(items, at)?;
            }
            b'q' | b'r' | 0x94 => self.put(op, at)?,
            b'h' | b'j' => self.get(op, at)?,
            b'c' => {
                let module = self.input.line("GLOBAL module")?.to_string();
                let name = self.input.line("GLOBAL name")?.to_string();
                self.stack.push(Value::Global(Rc::new((module, name))));
            }
            0x93 => {
                let (name, module) = (self.pop(at, "STACK_GLOBAL")?, self.pop(at, "STACK_GLOBAL")?);
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    bail!("byte {at}: STACK_GLOBAL needs two str, found {} and {}", module.kind(), name.kind());
                };
                self.stack.push(Value::Global(Rc::new((module.to_string(), name.to_string()))));
            }
            b'R' => self.reduce(at)?,
            b'b' => self.build(at)?,
            b'}' | b'd' | b's' | b'u' | b'Q' | b'G' if self.flavour == Flavour::TorchSave => self.step_torch(op, at)?,
            b'p' | b'g' | b'S' | b'V' | b'F' | b'L' => {
                bail!("byte {at}: opcode {:?} of a protocol 0 (text) pickle, which is not supported: save it with protocol 2", op as char)
            }
            _ => {
                let shown = if op.is_ascii_graphic() { format!(" ({:?})", op as char) } else { String::new() };
                let file = match self.flavour {
                    Flavour::PairFile => "a pair file",
                    Flavour::TorchSave => "a torch.save state dict",
                };
                bail!("byte {at}: opcode 0x{op:02x}{shown} is not one {file} uses");
            }
        }
        Ok(())
    }

    /// Protocol 0/1 ints, where Python 2 writes its bools as `I01`/`I00`.
    fn int_line(&mut self, at: usize) -> Result<()> {
        let text = self.input.line("INT")?;
        let value = match text {
            "01" => Value::Bool(true),
            "00" => Value::Bool(false),
            _ => Value::Int(text.parse().map_err(|_| anyhow::anyhow!("byte {at}: INT {text:?} is not an integer"))?),
        };
        self.stack.push(value);
        Ok(())
    }

    fn long1(&mut self, at: usize) -> Result<()> {
        let n = self.input.uint(1, "LONG1")? as usize;
        if n > 8 {
            bail!("byte {at}: LONG1 of {n} bytes is larger than any count in a pair file");
        }
        let raw = self.input.uint(n, "LONG1")?;
        let shift = 64 - 8 * n as u32;
        let value = if n == 0 { 0 } else { ((raw << shift) as i64) >> shift };
        self.stack.push(Value::Int(value));
        Ok(())
    }

    fn extend_top(&mut self, items: Vec<Value>, at: usize) -> Result<()> {
        let Some(Value::List(list)) = self.stack.last() else {
            bail!("byte {at}: APPEND to something that is not a list");
        };
        // Seal the items first: a list appended to itself is then refused as nested.
        let depth = nest(&items, at)?;
        if list.sealed.get() {
            bail!("byte {at}: APPEND to a list that is already inside another value");
        }
        list.depth.set(list.depth.get().max(depth));
        list.items.borrow_mut().extend(items);
        Ok(())
    }

    fn put(&mut self, op: u8, at: usize) -> Result<()> {
        let index = match op {
            b'q' => self.input.uint(1, "BINPUT")?,
            b'r' => self.input.uint(4, "LONG_BINPUT")?,
            _ => self.memo.len() as u64,
        };
        let Some(top) = self.stack.last() else { bail!("byte {at}: memo PUT on an empty stack") };
        self.memo.insert(index, top.clone());
        Ok(())
    }

    fn get(&mut self, op: u8, at: usize) -> Result<()> {
        let index = if op == b'h' { self.input.uint(1, "BINGET")? } else { self.input.uint(4, "LONG_BINGET")? };
        let value = self
            .memo
            .get(&index)
            .ok_or_else(|| anyhow::anyhow!("byte {at}: memo GET of index {index}, which was never PUT"))?;
        self.stack.push(value.clone());
        Ok(())
    }

    /// Runs the two callables that only rebuild bytes; any other call is kept as an `Object`.
    fn reduce(&mut self, at: usize) -> Result<()> {
        let args = self.pop(at, "REDUCE")?;
        let callable = self.pop(at, "REDUCE")?;
        let (Value::Global(g), Value::Tuple(args)) = (&callable, &args) else {
            bail!("byte {at}: REDUCE needs a global and a tuple, found {} and {}", callable.kind(), args.kind());
        };
        let value = match (g.0.as_str(), g.1.as_str(), &args.items[..]) {
            ("_codecs", "encode", [Value::Str(text), Value::Str(codec)])
                if matches!(&**codec, "latin1" | "latin-1") =>
            {
                Value::Bytes(
                    latin1(text)
                        .ok_or_else(|| anyhow::anyhow!("byte {at}: _codecs.encode of a str that is not latin-1"))?,
                )
            }
            ("__builtin__" | "builtins", "bytes", []) => Value::Bytes(Arc::from(&[][..])),
            ("collections", "OrderedDict", []) if self.flavour == Flavour::TorchSave => Value::Dict(Rc::default()),
            _ => {
                let depth = 1 + args.depth;
                if depth > MAX_DEPTH {
                    bail!("byte {at}: containers nest deeper than {MAX_DEPTH} levels");
                }
                args.items.iter().for_each(Value::seal);
                let object = Object {
                    callable: (*g).as_ref().clone(),
                    args: args.clone(),
                    state: RefCell::new(None),
                    sealed: Cell::new(false),
                    depth: Cell::new(depth),
                };
                Value::Object(Rc::new(object))
            }
        };
        self.stack.push(value);
        Ok(())
    }

    fn build(&mut self, at: usize) -> Result<()> {
        let state = self.pop(at, "BUILD")?;
        if let Some(Value::Dict(dict)) = self.stack.last() {
            let depth = nest(std::slice::from_ref(&state), at)?;
            if dict.sealed.get() || dict.state.borrow().is_some() {
                bail!("byte {at}: BUILD on a dict that is already built or nested");
            }
            dict.depth.set(dict.depth.get().max(depth));
            *dict.state.borrow_mut() = Some(state);
            return Ok(());
        }
        let Some(Value::Object(object)) = self.stack.last() else {
            bail!("byte {at}: BUILD on something other than a reconstructed object");
        };
        let depth = nest(std::slice::from_ref(&state), at)?;
        if object.sealed.get() || object.state.borrow().is_some() {
            bail!("byte {at}: BUILD on an object that is already built or nested");
        }
        object.depth.set(object.depth.get().max(depth));
        *object.state.borrow_mut() = Some(state);
        Ok(())
    }
}

impl Unpickler<'_> {
    /// The opcodes only `Flavour::TorchSave` admits.
    fn step_torch(&mut self, op: u8, at: usize) -> Result<()> {
        match op {
            b'}' => self.stack.push(Value::Dict(Rc::default())),
            b'd' => {
                let items = self.pop_mark(at, "DICT")?;
                self.stack.push(Value::Dict(Rc::default()));
                self.set_items(items, at)?;
            }
            b's' => {
                let value = self.pop(at, "SETITEM")?;
                let key = self.pop(at, "SETITEM")?;
                self.set_items(vec![key, value], at)?;
            }
            b'u' => {
                let items = self.pop_mark(at, "SETITEMS")?;
                self.set_items(items, at)?;
            }
            b'Q' => {
                let pid = self.pop(at, "BINPERSID")?;
                let Value::Tuple(t) = pid else { bail!("byte {at}: a persistent id that is a {}", pid.kind()) };
                if t.depth >= MAX_DEPTH {
                    bail!("byte {at}: containers nest deeper than {MAX_DEPTH} levels");
                }
                self.stack.push(Value::Persistent(t));
            }
            _ => {
                let bits = self.input.uint(8, "BINFLOAT")?.swap_bytes();
                self.stack.push(Value::Float(f64::from_bits(bits)));
            }
        }
        Ok(())
    }

    /// `SETITEM(S)`: key, value pairs into the dict below them on the stack.
    fn set_items(&mut self, items: Vec<Value>, at: usize) -> Result<()> {
        let Some(Value::Dict(dict)) = self.stack.last() else {
            bail!("byte {at}: SETITEM on something that is not a dict");
        };
        if !items.len().is_multiple_of(2) {
            bail!("byte {at}: SETITEMS with an odd number ({}) of keys and values", items.len());
        }
        let depth = nest(&items, at)?;
        if dict.sealed.get() {
            bail!("byte {at}: SETITEM on a dict that is already inside another value");
        }
        dict.depth.set(dict.depth.get().max(depth));
        let mut pairs = items.into_iter();
        let mut stored = dict.items.borrow_mut();
        while let (Some(k), Some(v)) = (pairs.next(), pairs.next()) {
            stored.push((k, v));
        }
        Ok(())
    }
}

fn latin1(text: &str) -> Option<Arc<[u8]>> {
    text.chars().map(|c| u8::try_from(c as u32).ok()).collect::<Option<Vec<u8>>>().map(Arc::from)
}
