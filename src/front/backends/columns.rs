//! Backend ids, statistics columns and the backend-table sequence: one
//! allocator shared by every service's [`super::Backends`] (the workers have one
//! statistics table and one backend table).

use serde::{Deserialize, Serialize};

use crate::stats::{ColCell, Table};

/// Backend ids, statistics columns and the table sequence: one set for
/// the backends of every service (the workers have one table), shared by
/// each service's [`Backends`].
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Columns {
    pub(super) next_id: u32,
    /// Columns given back, with the table sequence from which they are
    /// unused.
    pub(super) free_columns: Vec<(usize, u64)>,
    /// Columns never used yet start here.
    pub(super) next_column: usize,
    /// How many columns the statistics table has.
    #[serde(skip)]
    pub(super) columns: usize,
    /// The sequence number of the last backend table sent to workers.
    pub(super) table_seq: u64,
}

/// The [`Columns`] every service's backends take theirs from.
pub type SharedColumns = std::rc::Rc<std::cell::RefCell<Columns>>;

impl Columns {
    /// Fresh, for a table of `columns` columns.
    pub fn shared(columns: usize) -> SharedColumns {
        std::rc::Rc::new(std::cell::RefCell::new(Columns {
            columns,
            ..Columns::default()
        }))
    }

    /// Taken over from a previous front (its handover state), shared, for
    /// a table of `columns`.
    pub fn into_shared(mut self, columns: usize) -> SharedColumns {
        self.columns = columns;
        std::rc::Rc::new(std::cell::RefCell::new(self))
    }

    pub fn table_seq(&self) -> u64 {
        self.table_seq
    }

    /// The sequence number for a new backend table.
    pub fn next_table_seq(&mut self) -> u64 {
        self.table_seq += 1;
        self.table_seq
    }

    /// A column for a new backend: a never-used one, or one freed before
    /// `applied_everywhere` (the oldest table every live worker has
    /// applied). Its base is zeroed.
    pub(super) fn take_column(&mut self, table: &Table, applied_everywhere: u64) -> Option<usize> {
        let col = if self.next_column < self.columns {
            self.next_column += 1;
            self.next_column - 1
        } else {
            let i = self
                .free_columns
                .iter()
                .position(|&(_, freed)| freed <= applied_everywhere)?;
            self.free_columns.swap_remove(i).0
        };
        ColCell::of(table.base(col)).clear();
        table.queue(col).clear();
        Some(col)
    }
}
