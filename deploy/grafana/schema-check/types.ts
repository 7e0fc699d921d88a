// The shape a dashboard of this stack must have, in Grafana's own types: @grafana/schema (generated from Grafana's
// CUE schemas) at the version docker-compose.yml runs. check.mjs compiles each dashboard as an object literal that
// `satisfies LpuDashboard`, so TypeScript reports any key the schema does not have (excess property checks), any
// value of the wrong type or outside an enum, and any missing required field.
import type { Dashboard, DataQuery, DataSourceRef, FieldConfig, FieldConfigSource, Panel, RowPanel } from '@grafana/schema';
import type * as bargauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

// Panel options and custom field config may leave out anything (Grafana fills in the plugin's defaults when it loads
// the panel), but what is there must exist and have the right type. String enums become their values' union: JSON
// holds "value", never BigValueColorMode.Value.
type Loose<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? Loose<U>[]
    : T extends object
      ? { [K in keyof T]?: Loose<T[K]> }
      : T;

// @grafana/schema 11.2 has no type for the Prometheus datasource's queries (it lives in @grafana/prometheus, a
// React library): these are the fields of Grafana's PromQuery that a dashboard of this stack may use.
interface PromQuery extends DataQuery {
  datasource?: DataSourceRef;
  expr: string;
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  editorMode?: 'code' | 'builder';
}

type PanelOf<Type extends string, Options, Custom> = Omit<Panel, 'type' | 'options' | 'fieldConfig' | 'targets'> & {
  type: Type;
  options?: Loose<Options>;
  fieldConfig?: Omit<FieldConfigSource, 'defaults'> & {
    defaults: Omit<FieldConfig, 'custom'> & { custom?: Loose<Custom> };
  };
  targets?: PromQuery[];
};

type LpuPanel =
  | PanelOf<'timeseries', timeseries.Options, timeseries.FieldConfig>
  | PanelOf<'stat', stat.Options, Record<string, never>>
  | PanelOf<'bargauge', bargauge.Options, Record<string, never>>;

type LpuRow = Omit<RowPanel, 'type' | 'panels'> & { type: 'row'; panels: LpuPanel[] };

export type LpuDashboard = Omit<Dashboard, 'panels'> & { panels: (LpuRow | LpuPanel)[] };
