"""On PostgreSQL, a trigger refuses UPDATE and DELETE of audit events behind the ORM's back."""

from django.db import migrations

# The one update allowed is Django's SET NULL of actor_id when a user is deleted:
# the row keeps actor_name, and the hash never covered actor_id.
CREATE = """
CREATE OR REPLACE FUNCTION dashboard_audit_append_only() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.actor_id IS NULL
     AND (to_jsonb(NEW) - 'actor_id') = (to_jsonb(OLD) - 'actor_id') THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER dashboard_auditevent_append_only
  BEFORE UPDATE OR DELETE ON dashboard_auditevent
  FOR EACH ROW EXECUTE FUNCTION dashboard_audit_append_only();
"""
DROP = """
DROP TRIGGER IF EXISTS dashboard_auditevent_append_only ON dashboard_auditevent;
DROP FUNCTION IF EXISTS dashboard_audit_append_only();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("dashboard", "0002_roles")]
    operations = [migrations.RunPython(create_trigger, drop_trigger)]
