//! The `--rule` language of `defrag` and `maintain` (as ahrtr/etcd-defrag has it): arithmetic
//! and comparisons over a member's db figures, combined with `&&`, `||` and `!`.
//!
//! A small recursive-descent parser, no dependency. The rule is parsed and type-checked once,
//! before anything touches etcd, so that a typo is an exit-2 one-line error naming the
//! position (1-based column), never a surprise in the middle of a rolling defrag.
//!
//! Grammar, loosest first:
//! ```text
//! or      := and ("||" and)*
//! and     := not ("&&" not)*
//! not     := "!" not | cmp
//! cmp     := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/") unary)*
//! unary   := "-" unary | primary
//! primary := NUMBER | VARIABLE | "(" or ")"
//! ```
//! Numbers are f64 (`100*1024*1024`, `0.45`, `1e9`); `/` by zero gives infinity, as in Go.

use std::fmt;

use crate::error::{Error, Result};

/// The variables a rule may use, as ahrtr/etcd-defrag names them.
pub const VARIABLES: [&str; 5] = [
    "dbSize",
    "dbSizeInUse",
    "dbSizeFree",
    "dbQuota",
    "dbQuotaUsage",
];

/// The figures of one member a rule is evaluated against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vars {
    /// Size of the db file, bytes.
    pub db_size: u64,
    /// Bytes of the db file in use (the rest is free pages a defrag would return).
    pub db_size_in_use: u64,
    /// The quota the member is judged against, bytes.
    pub db_quota: u64,
}

impl Vars {
    fn get(&self, name: Var) -> f64 {
        let size = self.db_size as f64;
        let in_use = self.db_size_in_use as f64;
        match name {
            Var::Size => size,
            Var::SizeInUse => in_use,
            Var::SizeFree => (size - in_use).max(0.0),
            Var::Quota => self.db_quota as f64,
            Var::QuotaUsage => {
                if self.db_quota == 0 {
                    0.0
                } else {
                    size / self.db_quota as f64
                }
            }
        }
    }

    /// The variables and their values, for reports (`dbSize=...`).
    pub fn describe(&self) -> String {
        [
            Var::Size,
            Var::SizeInUse,
            Var::SizeFree,
            Var::Quota,
            Var::QuotaUsage,
        ]
        .iter()
        .map(|v| {
            let value = self.get(*v);
            if *v == Var::QuotaUsage {
                format!("{}={value:.4}", v.name())
            } else {
                format!("{}={value}", v.name())
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Size,
    SizeInUse,
    SizeFree,
    Quota,
    QuotaUsage,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "dbSize" => Var::Size,
            "dbSizeInUse" => Var::SizeInUse,
            "dbSizeFree" => Var::SizeFree,
            "dbQuota" => Var::Quota,
            "dbQuotaUsage" => Var::QuotaUsage,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Var::Size => "dbSize",
            Var::SizeInUse => "dbSizeInUse",
            Var::SizeFree => "dbSizeFree",
            Var::Quota => "dbQuota",
            Var::QuotaUsage => "dbQuotaUsage",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Num(f64),
    Var(Var),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Number,
    Bool,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Number => "a number",
            Type::Bool => "a condition",
        })
    }
}

/// A parsed, type-checked rule: evaluating it cannot fail.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    text: String,
    expr: Expr,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Rule {
    /// Parse and type-check a rule. Errors are exit-2 usage errors naming the position.
    pub fn parse(text: &str) -> Result<Rule> {
        let chars = text.chars().count();
        if chars > MAX_RULE_CHARS {
            return Err(ParseError::new(
                MAX_RULE_CHARS + 1,
                format!("the rule is {chars} characters long; the limit is {MAX_RULE_CHARS}"),
            )
            .into_error(text));
        }
        let tokens = lex(text).map_err(|e| e.into_error(text))?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: chars + 1,
            depth: 0,
        };
        let (expr, ty, start) = p.or().map_err(|e| e.into_error(text))?;
        if let Some(t) = p.peek() {
            return Err(ParseError::new(t.col, format!("unexpected {}", t.kind)).into_error(text));
        }
        if ty != Type::Bool {
            return Err(ParseError::new(
                start,
                "the rule must be a condition (a comparison such as `dbSizeFree > 0`), not a number",
            )
            .into_error(text));
        }
        Ok(Rule {
            text: text.trim().to_string(),
            expr,
        })
    }

    /// Whether the rule holds for these figures.
    pub fn matches(&self, vars: &Vars) -> bool {
        eval(&self.expr, vars) != 0.0
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Booleans are 1.0 and 0.0 internally; the type check keeps them apart from numbers.
fn eval(e: &Expr, v: &Vars) -> f64 {
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    match e {
        Expr::Num(n) => *n,
        Expr::Var(name) => v.get(*name),
        Expr::Neg(x) => -eval(x, v),
        Expr::Not(x) => b(eval(x, v) == 0.0),
        Expr::Bin(op, l, r) => {
            // && and || short-circuit, as in Go.
            match op {
                Op::And => return b(eval(l, v) != 0.0 && eval(r, v) != 0.0),
                Op::Or => return b(eval(l, v) != 0.0 || eval(r, v) != 0.0),
                _ => {}
            }
            let (l, r) = (eval(l, v), eval(r, v));
            match op {
                Op::Add => l + r,
                Op::Sub => l - r,
                Op::Mul => l * r,
                Op::Div => l / r,
                Op::Lt => b(l < r),
                Op::Le => b(l <= r),
                Op::Gt => b(l > r),
                Op::Ge => b(l >= r),
                Op::Eq => b(l == r),
                Op::Ne => b(l != r),
                Op::And | Op::Or => unreachable!("handled above"),
            }
        }
    }
}

#[derive(Debug)]
struct ParseError {
    col: usize,
    message: String,
}

impl ParseError {
    fn new(col: usize, message: impl Into<String>) -> Self {
        ParseError {
            col,
            message: message.into(),
        }
    }

    fn into_error(self, text: &str) -> Error {
        // A rule of thousands of characters would drown the one line: quote its start.
        let quoted: String = if text.chars().count() > QUOTE_CHARS {
            text.chars()
                .take(QUOTE_CHARS)
                .chain("...".chars())
                .collect()
        } else {
            text.to_string()
        };
        Error::Usage(format!(
            "bad --rule {quoted:?} at position {}: {}",
            self.col, self.message
        ))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Num(f64),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Num(n) => write!(f, "number {n}"),
            Kind::Ident(s) => write!(f, "`{s}`"),
            Kind::Op(o) => write!(f, "`{o}`"),
            Kind::LParen => f.write_str("`(`"),
            Kind::RParen => f.write_str("`)`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// 1-based column of the token's first character.
    col: usize,
}

const OPERATORS: [&str; 14] = [
    "&&", "||", "<=", ">=", "==", "!=", "<", ">", "!", "+", "-", "*", "/", "=",
];

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            // An exponent: 1e9, 2.5E-3.
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let s: String = chars[start..i].iter().collect();
            let n: f64 = s
                .parse()
                .map_err(|_| ParseError::new(col, format!("invalid number `{s}`")))?;
            if i < chars.len() && (chars[i].is_alphabetic() || chars[i] == '_') {
                return Err(ParseError::new(
                    i + 1,
                    format!("unexpected `{}` after the number `{s}`", chars[i]),
                ));
            }
            out.push(Token {
                kind: Kind::Num(n),
                col,
            });
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                kind: Kind::Ident(chars[start..i].iter().collect()),
                col,
            });
        } else if c == '(' {
            out.push(Token {
                kind: Kind::LParen,
                col,
            });
            i += 1;
        } else if c == ')' {
            out.push(Token {
                kind: Kind::RParen,
                col,
            });
            i += 1;
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let Some(op) = OPERATORS.iter().find(|o| rest.starts_with(**o)) else {
                return Err(ParseError::new(col, format!("unexpected character `{c}`")));
            };
            if *op == "=" {
                return Err(ParseError::new(col, "`=` is not an operator: write `==`"));
            }
            out.push(Token {
                kind: Kind::Op(op),
                col,
            });
            i += op.len();
        }
    }
    Ok(out)
}

/// How deep `(`, `!` and unary `-` may nest. The parser and the evaluator recurse once per
/// level; without a limit 5000 parentheses overflow the stack and abort the process.
pub const MAX_DEPTH: usize = 64;

/// The longest rule accepted: bounds the depth of left-nested operator chains (`1+1+...`),
/// which the evaluator also walks recursively.
pub const MAX_RULE_CHARS: usize = 4096;

/// How much of a rejected rule an error message quotes.
const QUOTE_CHARS: usize = 80;

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// The column just past the rule's last character, where "unexpected end" points.
    end: usize,
    /// Current nesting of `(`, `!` and unary `-`.
    depth: usize,
}

/// An expression, its type, and the column where it starts (for error messages).
type Parsed = (Expr, Type, usize);

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn end_col(&self) -> usize {
        self.end
    }

    /// Enter one nesting level at `col`, refusing past `MAX_DEPTH`.
    fn descend(&mut self, col: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(
                col,
                format!("nested deeper than {MAX_DEPTH} levels of `(`, `!` or `-`"),
            ));
        }
        Ok(())
    }

    /// The operator at the cursor, if it is one of `ops`.
    fn eat_op(&mut self, ops: &[&'static str]) -> Option<(&'static str, usize)> {
        match self.peek() {
            Some(Token {
                kind: Kind::Op(o),
                col,
            }) if ops.contains(o) => {
                let found = (*o, *col);
                self.pos += 1;
                Some(found)
            }
            _ => None,
        }
    }

    fn expect(&self, (e, ty, col): Parsed, want: Type, op: &str) -> Result<Expr, ParseError> {
        if ty == want {
            Ok(e)
        } else {
            Err(ParseError::new(
                col,
                format!("`{op}` needs {want} here, found {ty}"),
            ))
        }
    }

    fn binary(
        &mut self,
        ops: &[&'static str],
        operand: Type,
        result: Type,
        next: fn(&mut Parser) -> Result<Parsed, ParseError>,
    ) -> Result<Parsed, ParseError> {
        let mut left = next(self)?;
        while let Some((op, _)) = self.eat_op(ops) {
            let right = next(self)?;
            let start = left.2;
            let l = self.expect(left, operand, op)?;
            let r = self.expect(right, operand, op)?;
            left = (
                Expr::Bin(op_of(op), Box::new(l), Box::new(r)),
                result,
                start,
            );
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Parsed, ParseError> {
        self.binary(&["||"], Type::Bool, Type::Bool, Parser::and)
    }

    fn and(&mut self) -> Result<Parsed, ParseError> {
        self.binary(&["&&"], Type::Bool, Type::Bool, Parser::not)
    }

    fn not(&mut self) -> Result<Parsed, ParseError> {
        if let Some((_, col)) = self.eat_op(&["!"]) {
            self.descend(col)?;
            let inner = self.not()?;
            self.depth -= 1;
            let e = self.expect(inner, Type::Bool, "!")?;
            return Ok((Expr::Not(Box::new(e)), Type::Bool, col));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Parsed, ParseError> {
        const CMP: [&str; 6] = ["<", "<=", ">", ">=", "==", "!="];
        let left = self.sum()?;
        let Some((op, _)) = self.eat_op(&CMP) else {
            return Ok(left);
        };
        let right = self.sum()?;
        if let Some((again, col)) = self.eat_op(&CMP) {
            return Err(ParseError::new(
                col,
                format!("comparisons do not chain: `{op}` then `{again}`; join them with `&&`"),
            ));
        }
        let start = left.2;
        let l = self.expect(left, Type::Number, op)?;
        let r = self.expect(right, Type::Number, op)?;
        Ok((
            Expr::Bin(op_of(op), Box::new(l), Box::new(r)),
            Type::Bool,
            start,
        ))
    }

    fn sum(&mut self) -> Result<Parsed, ParseError> {
        self.binary(&["+", "-"], Type::Number, Type::Number, Parser::product)
    }

    fn product(&mut self) -> Result<Parsed, ParseError> {
        self.binary(&["*", "/"], Type::Number, Type::Number, Parser::unary)
    }

    fn unary(&mut self) -> Result<Parsed, ParseError> {
        if let Some((_, col)) = self.eat_op(&["-"]) {
            self.descend(col)?;
            let inner = self.unary()?;
            self.depth -= 1;
            let e = self.expect(inner, Type::Number, "-")?;
            return Ok((Expr::Neg(Box::new(e)), Type::Number, col));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Parsed, ParseError> {
        let Some(tok) = self.peek().cloned() else {
            return Err(ParseError::new(
                self.end_col(),
                "unexpected end of the rule: expected a number, a variable or `(`",
            ));
        };
        self.pos += 1;
        match tok.kind {
            Kind::Num(n) => Ok((Expr::Num(n), Type::Number, tok.col)),
            Kind::Ident(name) => match Var::parse(&name) {
                Some(v) => Ok((Expr::Var(v), Type::Number, tok.col)),
                None => Err(ParseError::new(
                    tok.col,
                    format!(
                        "unknown variable `{name}` (known: {})",
                        VARIABLES.join(", ")
                    ),
                )),
            },
            Kind::LParen => {
                self.descend(tok.col)?;
                let (e, ty, _) = self.or()?;
                self.depth -= 1;
                match self.peek() {
                    Some(Token {
                        kind: Kind::RParen, ..
                    }) => {
                        self.pos += 1;
                        Ok((e, ty, tok.col))
                    }
                    Some(t) => Err(ParseError::new(
                        t.col,
                        format!(
                            "expected `)` to close the `(` at position {}, found {}",
                            tok.col, t.kind
                        ),
                    )),
                    None => Err(ParseError::new(
                        self.end_col(),
                        format!("missing `)` to close the `(` at position {}", tok.col),
                    )),
                }
            }
            other => Err(ParseError::new(
                tok.col,
                format!("unexpected {other}: expected a number, a variable or `(`"),
            )),
        }
    }
}

fn op_of(op: &str) -> Op {
    match op {
        "+" => Op::Add,
        "-" => Op::Sub,
        "*" => Op::Mul,
        "/" => Op::Div,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "==" => Op::Eq,
        "!=" => Op::Ne,
        "&&" => Op::And,
        "||" => Op::Or,
        other => unreachable!("the lexer only produces known operators, got {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn vars(size: u64, in_use: u64) -> Vars {
        Vars {
            db_size: size,
            db_size_in_use: in_use,
            db_quota: 2048 * MIB,
        }
    }

    fn holds(rule: &str, v: Vars) -> bool {
        Rule::parse(rule)
            .unwrap_or_else(|e| panic!("{rule}: {e}"))
            .matches(&v)
    }

    fn error(rule: &str) -> String {
        let e = Rule::parse(rule).expect_err(rule);
        assert_eq!(e.exit_code(), 2, "{rule}");
        e.to_string()
    }

    #[test]
    fn the_maintain_default_rule() {
        let rule = "dbSizeFree > 100*1024*1024 && dbSizeFree > 0.45*dbSize";
        assert!(holds(rule, vars(1000 * MIB, 400 * MIB)));
        // Free space large in bytes but a small share of the file.
        assert!(!holds(rule, vars(1000 * MIB, 700 * MIB)));
        // A large share but less than 100 MiB.
        assert!(!holds(rule, vars(150 * MIB, 60 * MIB)));
    }

    #[test]
    fn precedence_and_associativity() {
        let v = vars(100, 40);
        assert!(holds("1 + 2 * 3 == 7", v));
        assert!(holds("(1 + 2) * 3 == 9", v));
        assert!(holds("10 - 4 - 3 == 3", v));
        assert!(holds("24 / 4 / 2 == 3", v));
        assert!(holds("-2 * -3 == 6", v));
        assert!(holds("1 < 2 || 1 > 2 && 1 > 2", v)); // && binds tighter
        assert!(!holds("(1 < 2 || 1 > 2) && 1 > 2", v));
        assert!(holds("!(dbSize < 50)", v));
        assert!(holds("!!(dbSize > 50)", v));
        assert!(holds("! dbSize < 50", v)); // ! applies to the comparison
        assert!(holds("1e2 == dbSize && .5 * 2 == 1 && 2.5E-1 == 0.25", v));
    }

    #[test]
    fn every_variable() {
        let v = Vars {
            db_size: 1000,
            db_size_in_use: 600,
            db_quota: 4000,
        };
        assert!(holds(
            "dbSize == 1000 && dbSizeInUse == 600 && dbSizeFree == 400 && dbQuota == 4000 && dbQuotaUsage == 0.25",
            v
        ));
        assert!(holds(
            "dbSize >= 1000 && dbSize <= 1000 && dbSize != 999",
            v
        ));
        // In-use above size (a racing status) never makes free space negative.
        let odd = Vars {
            db_size: 10,
            db_size_in_use: 20,
            db_quota: 100,
        };
        assert!(holds("dbSizeFree == 0", odd));
        assert!(holds("dbSize / 0 > 1e300", odd));
    }

    #[test]
    fn errors_name_the_position() {
        let e = error("dbSize > 100 && dbsize > 5");
        assert!(e.contains("position 17"), "{e}");
        assert!(e.contains("unknown variable `dbsize`"), "{e}");
        assert!(e.contains("dbSizeInUse"), "{e}");

        let e = error("dbSize > ");
        assert!(e.contains("position 10"), "{e}");
        assert!(e.contains("end of the rule"), "{e}");

        let e = error("dbSize = 5");
        assert!(e.contains("position 8") && e.contains("=="), "{e}");

        let e = error("(dbSize > 5");
        assert!(e.contains("missing `)`") && e.contains("position 1"), "{e}");

        let e = error("dbSize > 5)");
        assert!(
            e.contains("position 11") && e.contains("unexpected `)`"),
            "{e}"
        );

        let e = error("dbSize # 5");
        assert!(e.contains("position 8") && e.contains("`#`"), "{e}");

        let e = error("dbSize + 1");
        assert!(e.contains("must be a condition"), "{e}");

        let e = error("dbSize && dbQuota > 1");
        assert!(e.contains("`&&` needs a condition"), "{e}");
        assert!(e.contains("position 1"), "{e}");

        let e = error("(dbSize > 1) + 2 > 1");
        assert!(e.contains("`+` needs a number"), "{e}");

        let e = error("1 < 2 < 3");
        assert!(
            e.contains("do not chain") && e.contains("position 7"),
            "{e}"
        );

        let e = error("!dbSize");
        assert!(e.contains("`!` needs a condition"), "{e}");

        let e = error("10GiB > dbSize");
        assert!(e.contains("position 3"), "{e}");

        let e = error("");
        assert!(e.contains("position 1"), "{e}");

        for e in [error("1..2 > 1"), error("dbSize > 1 dbSize")] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn describe_lists_every_variable() {
        let d = vars(100, 40).describe();
        for v in VARIABLES {
            assert!(d.contains(&format!("{v}=")), "{d}");
        }
        assert!(d.contains("dbSizeFree=60"), "{d}");
    }

    /// Regression (issue 11, bug 6): 5000 parentheses or 20000 `!` aborted the process with a
    /// stack overflow (exit 134). Now a one-line usage error.
    #[test]
    fn deep_nesting_is_a_usage_error_not_a_crash() {
        let parens = format!("{}dbSize > 1{}", "(".repeat(5000), ")".repeat(5000));
        let nots = format!("{}(dbSize > 1)", "!".repeat(20000));
        let negs = format!("{}dbSize > 1", "-".repeat(3000));
        for rule in [parens, nots, negs] {
            let e = Rule::parse(&rule).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let line = e.one_line();
            assert!(!line.contains('\n') && line.len() < 300, "{line}");
            assert!(
                line.contains("deeper than 64") || line.contains("limit is 4096"),
                "{line}"
            );
        }
        let within = format!("{}dbSize > 1{}", "(".repeat(60), ")".repeat(60));
        assert!(Rule::parse(&within).is_ok());
        let e = error(&format!("{}(dbSize > 1)", "!".repeat(100)));
        assert!(
            e.contains("deeper than 64") && e.contains("position 65"),
            "{e}"
        );
    }

    /// A long but flat chain is walked recursively by `eval`: the length limit bounds it.
    #[test]
    fn long_flat_chains_evaluate() {
        let n = (MAX_RULE_CHARS - 20) / 4;
        let rule = format!("dbSize{} > 0", " + 1".repeat(n));
        let r = Rule::parse(&rule).unwrap();
        assert!(r.matches(&vars(1, 1)));
        let e = error(&format!("dbSize{} > 0", " + 1".repeat(2000)));
        assert!(e.contains("limit is 4096"), "{e}");
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        fn var() -> impl Strategy<Value = Var> {
            prop_oneof![
                Just(Var::Size),
                Just(Var::SizeInUse),
                Just(Var::SizeFree),
                Just(Var::Quota),
                Just(Var::QuotaUsage),
            ]
        }

        fn number() -> impl Strategy<Value = Expr> {
            let leaf = prop_oneof![
                (0u32..1_000_000).prop_map(|n| Expr::Num(f64::from(n))),
                var().prop_map(Expr::Var),
            ];
            leaf.prop_recursive(5, 24, 2, |inner| {
                prop_oneof![
                    inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
                    (
                        prop_oneof![Just(Op::Add), Just(Op::Sub), Just(Op::Mul), Just(Op::Div)],
                        inner.clone(),
                        inner
                    )
                        .prop_map(|(o, l, r)| Expr::Bin(
                            o,
                            Box::new(l),
                            Box::new(r)
                        )),
                ]
            })
        }

        fn condition() -> impl Strategy<Value = Expr> {
            let cmp = prop_oneof![
                Just(Op::Lt),
                Just(Op::Le),
                Just(Op::Gt),
                Just(Op::Ge),
                Just(Op::Eq),
                Just(Op::Ne),
            ];
            let leaf = (cmp, number(), number())
                .prop_map(|(o, l, r)| Expr::Bin(o, Box::new(l), Box::new(r)));
            leaf.prop_recursive(4, 16, 2, |inner| {
                prop_oneof![
                    inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
                    (
                        prop_oneof![Just(Op::And), Just(Op::Or)],
                        inner.clone(),
                        inner
                    )
                        .prop_map(|(o, l, r)| Expr::Bin(
                            o,
                            Box::new(l),
                            Box::new(r)
                        )),
                ]
            })
        }

        /// Fully parenthesised source text of an expression.
        fn print(e: &Expr) -> String {
            match e {
                Expr::Num(n) => format!("{n}"),
                Expr::Var(v) => v.name().to_string(),
                Expr::Neg(e) => format!("-({})", print(e)),
                Expr::Not(e) => format!("!({})", print(e)),
                Expr::Bin(o, l, r) => {
                    let op = match o {
                        Op::Add => "+",
                        Op::Sub => "-",
                        Op::Mul => "*",
                        Op::Div => "/",
                        Op::Lt => "<",
                        Op::Le => "<=",
                        Op::Gt => ">",
                        Op::Ge => ">=",
                        Op::Eq => "==",
                        Op::Ne => "!=",
                        Op::And => "&&",
                        Op::Or => "||",
                    };
                    format!("({}) {op} ({})", print(l), print(r))
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any text of the rule alphabet parses or fails with a one-line exit-2 error.
            #[test]
            fn random_token_soup_never_panics(
                text in "[ ()!<>=&|+*/.0-9e-]{0,40}|(dbSize|dbQuota|[a-z]| |[()!<>=&|+*/-]|[0-9.]){0,30}"
            ) {
                if let Err(e) = Rule::parse(&text) {
                    prop_assert_eq!(e.exit_code(), 2);
                    prop_assert!(!e.one_line().contains('\n'));
                }
            }

            #[test]
            fn arbitrary_unicode_never_panics(text in "\\PC{0,64}") {
                if let Err(e) = Rule::parse(&text) {
                    prop_assert_eq!(e.exit_code(), 2);
                }
            }

            /// Printing a well-typed expression and parsing it back gives the same tree, and
            /// evaluating it does not panic.
            #[test]
            fn print_then_parse_round_trips(e in condition(), size in 0u64..1<<33, used in 0u64..1<<33) {
                let text = print(&e);
                let rule = Rule::parse(&text).map_err(|err| TestCaseError::fail(err.one_line()))?;
                prop_assert_eq!(&rule.expr, &e);
                let _ = rule.matches(&vars(size, used.min(size)));
            }
        }

        fn vars(size: u64, in_use: u64) -> Vars {
            Vars {
                db_size: size,
                db_size_in_use: in_use,
                db_quota: 2 << 30,
            }
        }
    }
}
