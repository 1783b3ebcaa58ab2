package migrations

import (
	"context"
	"fmt"
	"path"
)

// Step is one migration a run would apply or roll back, with its SQL.
type Step struct {
	Version   int64
	Name      string
	Direction string
	SQL       string
}

// PlanUp returns what Up would apply, without changing anything.
func (m *Migrator) PlanUp(ctx context.Context) ([]Step, error) {
	return m.PlanUpTo(ctx, m.files[len(m.files)-1].Version)
}

// PlanUpTo returns what UpTo(version) would apply, without changing
// anything.
func (m *Migrator) PlanUpTo(ctx context.Context, version int64) ([]Step, error) {
	if err := m.checkVersion(version, false); err != nil {
		return nil, err
	}
	st, err := m.Status(ctx)
	if err != nil {
		return nil, err
	}
	var steps []Step
	for _, s := range st {
		if !s.Applied && s.Version <= version {
			steps = append(steps, m.step(s.Version, "up"))
		}
	}
	return steps, nil
}

// PlanDown returns what Down would roll back, without changing anything.
func (m *Migrator) PlanDown(ctx context.Context) ([]Step, error) {
	steps, err := m.PlanDownTo(ctx, 0)
	if len(steps) > 1 {
		steps = steps[:1]
	}
	return steps, err
}

// PlanDownTo returns what DownTo(version) would roll back, newest first,
// without changing anything.
func (m *Migrator) PlanDownTo(ctx context.Context, version int64) ([]Step, error) {
	if err := m.checkVersion(version, true); err != nil {
		return nil, err
	}
	st, err := m.Status(ctx)
	if err != nil {
		return nil, err
	}
	var steps []Step
	for i := len(st) - 1; i >= 0; i-- {
		s := st[i]
		if !s.Applied || s.Version <= version {
			continue
		}
		if s.Name == "" {
			return nil, fmt.Errorf("version %d is applied but this binary has no file for it: use the binary that applied it", s.Version)
		}
		steps = append(steps, m.step(s.Version, "down"))
	}
	return steps, nil
}

func (m *Migrator) step(version int64, direction string) Step {
	for _, f := range m.files {
		if f.Version == version {
			sql := f.UpSQL()
			if direction == "down" {
				sql = f.DownSQL()
			}
			return Step{Version: version, Name: f.Name, Direction: direction, SQL: sql}
		}
	}
	return Step{Version: version, Direction: direction}
}

func baseName(p string) string { return path.Base(p) }
