//! One way to run the store's SQL on either engine: [`Db`] is a SQLite connection or a
//! PostgreSQL client (or a transaction of either), with rusqlite's shape — `execute`,
//! `query_row`/`query_opt`/`query_map`, `transaction`/`commit` — so each store method is
//! written once.
//!
//! SQL is written for both: `?N` placeholders (turned into `$N` for PostgreSQL), integers
//! for flags (`BIGINT` columns in PostgreSQL), RFC 3339 text for times, and a `rowid`
//! column (SQLite's own; a `BIGSERIAL` in PostgreSQL) for insertion order. Parameters are
//! [`P`] values that bind to whatever type PostgreSQL infers for their placeholder.

use std::borrow::Cow;
use std::error::Error;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql as PgToSql, Type};

use super::StoreError;

/// A connection (or transaction) of either engine.
pub enum Db<'a> {
    /// SQLite.
    Lite(&'a rusqlite::Connection),
    /// A SQLite transaction.
    LiteTx(rusqlite::Transaction<'a>),
    /// PostgreSQL.
    Pg(&'a mut postgres::Client),
    /// A PostgreSQL transaction (or savepoint).
    PgTx(postgres::Transaction<'a>),
}

/// A parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum P<'a> {
    /// NULL.
    Null,
    /// An integer (also flags: 0/1).
    Int(i64),
    /// Text.
    Text(&'a str),
}

/// `params![a, b, …]`: parameters for [`Db`], each taken by reference as rusqlite's macro
/// does (values, strings, options, flags).
#[macro_export]
#[doc(hidden)]
macro_rules! store_params {
    () => { &[] as &[$crate::store::sql::P<'_>] };
    ($($v:expr),+ $(,)?) => { &[$($crate::store::sql::P::from(&$v)),+] as &[$crate::store::sql::P<'_>] };
}
pub use crate::store_params as params;

macro_rules! int_params {
    ($($t:ty),*) => {$(
        impl From<&$t> for P<'_> {
            fn from(v: &$t) -> Self {
                P::Int(i64::try_from(*v).unwrap_or(i64::MAX))
            }
        }
        impl From<&Option<$t>> for P<'_> {
            fn from(v: &Option<$t>) -> Self {
                v.map_or(P::Null, |v| P::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
    )*};
}
int_params!(i64, i32, u32, u64, u16, usize);

impl From<&bool> for P<'_> {
    fn from(v: &bool) -> Self {
        P::Int((*v).into())
    }
}
impl From<&Option<bool>> for P<'_> {
    fn from(v: &Option<bool>) -> Self {
        v.map_or(P::Null, |v| P::Int(v.into()))
    }
}
impl<'a> From<&'a String> for P<'a> {
    fn from(v: &'a String) -> Self {
        P::Text(v)
    }
}
impl<'a, 'b: 'a> From<&'a &'b str> for P<'a> {
    fn from(v: &'a &'b str) -> Self {
        P::Text(v)
    }
}
impl<'a, 'b: 'a> From<&'a &'b String> for P<'a> {
    fn from(v: &'a &'b String) -> Self {
        P::Text(v)
    }
}
impl<'a> From<&'a Option<String>> for P<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(P::Null, P::Text)
    }
}
impl<'a, 'b: 'a> From<&'a Option<&'b str>> for P<'a> {
    fn from(v: &'a Option<&'b str>) -> Self {
        v.map_or(P::Null, P::Text)
    }
}

/// An owned parameter, for statements whose parameters are collected as they are built.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a Arg> for P<'a> {
    fn from(v: &'a Arg) -> Self {
        match v {
            Arg::Int(i) => P::Int(*i),
            Arg::Text(s) => P::Text(s),
        }
    }
}

/// Borrowed parameters of collected [`Arg`]s.
pub fn args(list: &[Arg]) -> Vec<P<'_>> {
    list.iter().map(P::from).collect()
}

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            P::Null => ToSqlOutput::Owned(Value::Null),
            P::Int(v) => ToSqlOutput::Owned(Value::Integer(*v)),
            P::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl PgToSql for P<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match (self, ty) {
            (P::Null, _) => Ok(IsNull::Yes),
            (P::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (P::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (P::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (P::Int(v), &Type::BOOL) => (*v != 0).to_sql(ty, out),
            (P::Int(v), &Type::TEXT | &Type::VARCHAR) => v.to_string().as_str().to_sql(ty, out),
            (P::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::NAME | &Type::BPCHAR) => {
                s.to_sql(ty, out)
            }
            (p, ty) => Err(format!("cannot bind {p:?} to a {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer (or a boolean as 0/1).
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
}

/// A row, read out of either engine.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

/// What a column can be read as.
pub trait FromValue: Sized {
    /// `None` when the value does not fit this type.
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromValue for u16 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u16::try_from(i).ok())
    }
}
impl FromValue for u64 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u64::try_from(i).ok())
    }
}
impl FromValue for i32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| i32::try_from(i).ok())
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl Row {
    /// Column `i` as `T`; an error names the column when it is missing or of another type.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| StoreError::Schema(format!("no column {i}")))?;
        T::from_value(v).ok_or_else(|| {
            StoreError::Schema(format!(
                "column {i} holds {v:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }

    fn from_lite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        use rusqlite::types::ValueRef;
        let n = r.as_ref().column_count();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Text(hex::encode(b)),
            });
        }
        Ok(Row(out))
    }

    fn from_pg(r: &postgres::Row) -> Result<Row, StoreError> {
        let mut out = Vec::with_capacity(r.len());
        for (i, col) in r.columns().iter().enumerate() {
            let v = match *col.type_() {
                Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
                Type::INT4 => r
                    .try_get::<_, Option<i32>>(i)?
                    .map(|v| Value::Int(v.into())),
                Type::INT2 => r
                    .try_get::<_, Option<i16>>(i)?
                    .map(|v| Value::Int(v.into())),
                Type::BOOL => r
                    .try_get::<_, Option<bool>>(i)?
                    .map(|v| Value::Int(v.into())),
                Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Value::Real),
                Type::FLOAT4 => r
                    .try_get::<_, Option<f32>>(i)?
                    .map(|v| Value::Real(v.into())),
                _ => r.try_get::<_, Option<String>>(i)?.map(Value::Text),
            };
            out.push(v.unwrap_or(Value::Null));
        }
        Ok(Row(out))
    }
}

/// `?N` placeholders → `$N` (outside quoted strings and identifiers).
pub fn pg_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

fn as_pg<'a>(params: &'a [P<'a>]) -> Vec<&'a (dyn PgToSql + Sync)> {
    params.iter().map(|p| p as &(dyn PgToSql + Sync)).collect()
}

impl Db<'_> {
    /// Whether this is PostgreSQL.
    pub fn is_pg(&self) -> bool {
        matches!(self, Db::Pg(_) | Db::PgTx(_))
    }

    /// Runs a statement; returns the number of rows changed.
    pub fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<usize, StoreError> {
        Ok(match self {
            Db::Lite(c) => c.execute(sql, rusqlite::params_from_iter(params))?,
            Db::LiteTx(t) => t.execute(sql, rusqlite::params_from_iter(params))?,
            Db::Pg(c) => c.execute(pg_sql(sql).as_ref(), &as_pg(params))? as usize,
            Db::PgTx(t) => t.execute(pg_sql(sql).as_ref(), &as_pg(params))? as usize,
        })
    }

    /// Runs several statements without parameters.
    pub fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Lite(c) => c.execute_batch(sql)?,
            Db::LiteTx(t) => t.execute_batch(sql)?,
            Db::Pg(c) => c.batch_execute(sql)?,
            Db::PgTx(t) => t.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Every row of a query.
    pub fn rows(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>, StoreError> {
        fn lite(
            c: &rusqlite::Connection,
            sql: &str,
            params: &[P<'_>],
        ) -> Result<Vec<Row>, StoreError> {
            let mut stmt = c.prepare(sql)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(params), Row::from_lite)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        }
        match self {
            Db::Lite(c) => lite(c, sql, params),
            Db::LiteTx(t) => lite(t, sql, params),
            Db::Pg(c) => c
                .query(pg_sql(sql).as_ref(), &as_pg(params))?
                .iter()
                .map(Row::from_pg)
                .collect(),
            Db::PgTx(t) => t
                .query(pg_sql(sql).as_ref(), &as_pg(params))?
                .iter()
                .map(Row::from_pg)
                .collect(),
        }
    }

    /// Every row of a query, each through `f`.
    pub fn query_map<T>(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.rows(sql, params)?.iter().map(f).collect()
    }

    /// The first row through `f`, `None` when there is none.
    pub fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.rows(sql, params)?.first().map(f).transpose()
    }

    /// The first row through `f`; an error when there is none.
    pub fn query_row<T>(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| StoreError::Schema("the query returned no row".into()))
    }

    /// Starts a transaction (a savepoint inside one); it rolls back unless committed.
    pub fn transaction(&mut self) -> Result<Db<'_>, StoreError> {
        Ok(match self {
            Db::Lite(c) => Db::LiteTx(c.unchecked_transaction()?),
            Db::LiteTx(t) => Db::LiteTx(t.unchecked_transaction()?),
            Db::Pg(c) => Db::PgTx(c.transaction()?),
            Db::PgTx(t) => Db::PgTx(t.transaction()?),
        })
    }

    /// Commits a transaction started with [`Db::transaction`].
    pub fn commit(self) -> Result<(), StoreError> {
        match self {
            Db::LiteTx(t) => t.commit()?,
            Db::PgTx(t) => t.commit()?,
            Db::Lite(_) | Db::Pg(_) => {}
        }
        Ok(())
    }
}

/// Whether an error is any constraint violation (unique, foreign key, not null, check) on
/// either engine.
pub fn is_constraint_violation(e: &StoreError) -> bool {
    use postgres::error::SqlState;
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        StoreError::Postgres(e) => e.code().is_some_and(|c| {
            [
                SqlState::UNIQUE_VIOLATION,
                SqlState::FOREIGN_KEY_VIOLATION,
                SqlState::NOT_NULL_VIOLATION,
                SqlState::CHECK_VIOLATION,
            ]
            .contains(c)
        }),
        _ => false,
    }
}

/// Whether an error is a unique-constraint violation (on either engine).
pub fn is_unique_violation(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        StoreError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?10"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $10"
        );
        assert_eq!(pg_sql("SELECT 1"), "SELECT 1");
        assert_eq!(pg_sql("SELECT \"a?1\" , ?2"), "SELECT \"a?1\" , $2");
    }

    #[test]
    fn sqlite_rows_read_back_through_the_neutral_api() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut db = Db::Lite(&conn);
        db.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c INTEGER)")
            .unwrap();
        let none: Option<String> = None;
        {
            let tx = db.transaction().unwrap();
            let mut tx = tx;
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                params![7i64, "x", true],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                params![8i64, none, false],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let rows = db
            .query_map("SELECT a, b, c FROM t ORDER BY a", params![], |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<Option<String>>(1)?,
                    r.get::<bool>(2)?,
                ))
            })
            .unwrap();
        assert_eq!(rows, vec![(7, Some("x".into()), true), (8, None, false)]);
        assert!(db
            .query_opt("SELECT a FROM t WHERE a = ?1", params![99i64], |r| r
                .get::<i64>(0))
            .unwrap()
            .is_none());
        // A wrong type is an error naming the column, not a panic.
        let e = db
            .query_row("SELECT b FROM t WHERE a = 7", params![], |r| {
                r.get::<i64>(0)
            })
            .unwrap_err();
        assert!(e.to_string().contains("column 0"), "{e}");
        // Uncommitted transactions roll back.
        {
            let mut tx = db.transaction().unwrap();
            tx.execute("DELETE FROM t", params![]).unwrap();
        }
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", params![], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
